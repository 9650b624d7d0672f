"""One training run: config -> process group -> component -> loop -> report, in this process."""

from __future__ import annotations

from pathlib import Path

from datajobs.store import Store
from trainer import components, distributed
from trainer.checkpoint import load_weights
from trainer.config import RunConfig, dump_config
from trainer.loop import RunResult, Trainer
from trainer.report import write_report


def prepare_run_dir(cfg: RunConfig, is_main: bool) -> Path:
    """The run folder; rank 0 writes the resolved config into it (atomically)."""
    run_dir = Path(cfg.logging.run_dir) / cfg.run_name
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(dump_config(cfg))
        tmp.replace(run_dir / "config.yaml")
    return run_dir


def train(cfg: RunConfig) -> tuple[RunResult, Path | None]:
    """Train the configured component; returns the result and (on rank 0) the report path."""
    env = distributed.init(cfg.distributed, cfg.train.device)
    try:
        component = components.get(cfg.component)(cfg)
        run_dir = prepare_run_dir(cfg, env.is_main)
        distributed.barrier(env)
        trainer = Trainer(cfg, component, Store(cfg.data.root), run_dir, env)
        result = trainer.fit()
        report = None
        best = run_dir / "best" / "model.safetensors"
        final_weights = None if best.is_file() else trainer.full_state_dict()  # collective under FSDP
        if env.is_main:
            model = component.build_model(trainer.data).to(env.device)
            if final_weights is None:
                load_weights(model, best)
            else:
                model.load_state_dict(final_weights)
            sections = component.report(model, trainer.data, env.device)
            summary = {
                "component": cfg.component,
                "steps": result.step,
                "stopped early": result.stopped_early,
                "best validation loss": f"{result.best_metric:.4f} at step {result.best_step}"
                if result.best_metric is not None else "n/a",
                "data": ", ".join(f"{k} -> {v}" for k, v in result.lineage.items()),
                "world size": env.world_size,
                "config": "config.yaml",
            }
            for section in sections:
                summary.update({k: f"{v:.4f}" for k, v in section.metrics.items()})
            report = write_report(run_dir, f"Run {cfg.run_name}", summary, sections, trainer.data.card)
        distributed.barrier(env)
        return result, report
    finally:
        distributed.shutdown()
