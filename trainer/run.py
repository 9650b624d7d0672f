"""One training run: config -> process group -> component -> loop -> report, in this process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datajobs.store import Store
from trainer import bundle, components, distributed
from trainer.checkpoint import unique_storage
from trainer.config import RunConfig, dump_config
from trainer.loop import RunResult, Trainer
from trainer.report import write_report
from trainer.telemetry import push_report_metrics

log = logging.getLogger(__name__)


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
        store = Store(cfg.data.root)
        trainer = Trainer(cfg, component, store, run_dir, env)
        result = trainer.fit()
        report = None
        best_dir = run_dir / bundle.BEST
        best = best_dir / bundle.WEIGHTS
        final_weights = None if best.is_file() else trainer.full_state_dict()  # collective under FSDP
        if env.is_main:
            model = component.build_model(trainer.data).to(env.device)
            if final_weights is None:
                bundle.load_weights(model, best)
                info_file = best_dir / bundle.INFO
                best_info = json.loads(info_file.read_text()).get("best", {}) if info_file.is_file() else {}
                weights: dict | Path = best
                step = best_info.get("step", result.best_step)
            else:
                model.load_state_dict(final_weights)
                best_info, weights, step = {}, unique_storage(final_weights), result.step
            # best/ becomes the bundle: weights + component state + config + lineage + training domain
            component.calibrate(model, trainer.data, env.device)
            has_bundle = bundle.has_state(component)
            if has_bundle:
                bundle.write_bundle(best_dir, weights=weights, component=component, cfg=cfg,
                                    lineage=bundle.dataset_lineage(store, trainer.data.lineage), step=step,
                                    best=best_info)
            else:
                log.warning("component %s has no bundle state (state()): best/ holds its weights only",
                            cfg.component)
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
            report_metrics = {k: v for section in sections for k, v in section.metrics.items()}
            push_report_metrics(cfg.component, cfg.run_name, report_metrics)
            if has_bundle:
                bundle.add_metrics(best_dir, report_metrics)
        distributed.barrier(env)
        return result, report
    finally:
        distributed.shutdown()
