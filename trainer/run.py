"""One training run: config -> process group -> component -> loop -> report, in this process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datajobs.errors import DataError
from datajobs.store import Store
from trainer import bundle, components, distributed
from trainer.checkpoint import describe_write_error, unique_storage, write_errors
from trainer.config import RunConfig, dump_config
from trainer.loop import RunResult, Trainer
from trainer.report import LOSS_PLOT, REPORT, write_report
from trainer.runfolder import RunFolder
from trainer.telemetry import METRICS_FILE, push_report_metrics

log = logging.getLogger(__name__)


def prepare_run_dir(cfg: RunConfig, is_main: bool) -> RunFolder:
    """The run folder (a local folder or an fsspec URL); rank 0 writes the resolved config into it (atomically)."""
    run = RunFolder(f"{cfg.logging.run_dir.rstrip('/')}/{cfg.run_name}")
    if is_main:
        try:
            run.makedirs()
            run.write_text("config.yaml", dump_config(cfg))
        except write_errors() as exc:
            raise DataError(f"run folder {run} cannot be written ({describe_write_error(exc)}); check "
                            f"logging.run_dir (for s3://: the bucket, AWS_ENDPOINT_URL and the credentials), or "
                            f"run `astrobio-train doctor -c CONFIG`") from None
    return run


def train(cfg: RunConfig) -> tuple[RunResult, Path | str | None]:
    """Train the configured component; returns the result and (on rank 0) the report path (a URL for a run
    folder on an object store)."""
    env = distributed.init(cfg.distributed, cfg.train.device)
    try:
        component = components.get(cfg.component)(cfg)
        run = prepare_run_dir(cfg, env.is_main)
        distributed.barrier(env)
        store = Store(cfg.data.root)
        trainer = Trainer(cfg, component, store, run, env)
        result = trainer.fit()
        report = None
        best_dir = run.scratch / bundle.BEST  # on an object store: the working copy, uploaded below
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
            run.fetch(METRICS_FILE)
            report = write_report(run.scratch, f"Run {cfg.run_name}", summary, sections, trainer.data.card)
            report_metrics = {k: v for section in sections for k, v in section.metrics.items()}
            push_report_metrics(cfg.component, cfg.run_name, report_metrics)
            if has_bundle:
                bundle.add_metrics(best_dir, report_metrics)
            if run.remote:
                run.publish(bundle.BEST, last=bundle.INFO)
                run.publish(LOSS_PLOT)
                run.publish(REPORT)
                report = run.url(REPORT)
        distributed.barrier(env)
        return result, report
    finally:
        distributed.shutdown()
