"""Training telemetry: Prometheus metrics, console progress, metrics.jsonl, TensorBoard and W&B sinks."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from datajobs.errors import require
from trainer.config import LoggingConfig
from trainer.runfolder import RunFolder

log = logging.getLogger("astrobio.train")

METRICS_FILE = "metrics.jsonl"
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class StepRecord:
    """What one optimizer step did."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    samples: int
    tokens: int
    step_seconds: float
    data_wait_seconds: float
    flops: float | None = None  # training FLOPs of this step on this rank


def repair_metrics(run: RunFolder, upto_step: int) -> str:
    """Keep the records of steps up to `upto_step` (a resumed run writes the later ones again) and drop a line
    torn by a kill; rewritten atomically (temp + rename, or one PUT), only when something changes. Returns the
    text kept."""
    try:
        text = run.read_text(METRICS_FILE)
    except FileNotFoundError:
        return ""
    kept, dropped, torn = [], 0, 0
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
            keep = line.endswith("\n") and record["step"] <= upto_step
        except (ValueError, TypeError, KeyError):
            torn += 1
            continue
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if not (dropped or torn):
        return text
    run.write_text(METRICS_FILE, "".join(kept))
    log.info("metrics.jsonl: kept %d records up to step %d, dropped %d after it and %d torn line(s)", len(kept),
             upto_step, dropped, torn)
    return "".join(kept)


def process_memory_bytes() -> int:
    """Resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of the device, from a small table; None when unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}
    return next((v for k, v in table.items() if k in name), None)


class PrometheusMetrics:
    """The `astrobio_*` series of docs/contracts.md, in a registry of their own, served over HTTP.

    Each attribute is the labelled child (`component`, `rank`), bound once so a step pays no label lookup.
    Gauges read NaN until first set (not measured yet); GPU gauges exist only on CUDA devices, tokens/s and MFU
    only in runs that measure them.
    """

    def __init__(self, component: str, rank: int, device: torch.device) -> None:
        self.registry = CollectorRegistry()
        labels = {"component": component, "rank": str(rank)}
        names = list(labels)

        def gauge(name: str, doc: str):
            child = Gauge(name, doc, names, registry=self.registry).labels(**labels)
            child.set(float("nan"))
            return child

        def histogram(name: str, doc: str):
            return Histogram(name, doc, names, buckets=STEP_BUCKETS, registry=self.registry).labels(**labels)

        def counter(name: str, doc: str):
            return Counter(name, doc, names, registry=self.registry).labels(**labels)

        self.step = gauge("astrobio_train_step", "Last completed optimizer step.")
        self.last_step_ts = gauge("astrobio_train_last_step_timestamp_seconds", "Unix time of the last step.")
        self.loss = gauge("astrobio_train_loss", "Training loss of the last step.")
        self.eval_loss = gauge("astrobio_eval_loss", "Last evaluation loss.")
        self.lr = gauge("astrobio_learning_rate", "Learning rate of the last step.")
        self.grad_norm = gauge("astrobio_grad_norm", "Gradient norm before clipping.")
        self.samples_ps = gauge("astrobio_samples_per_second", "Samples per second over the last window.")
        # Exported only by runs that measure them (token models; known FLOPs and device peak).
        self.tokens_ps = Gauge("astrobio_tokens_per_second", "Tokens per second over the last window.", names,
                               registry=self.registry)
        self.mfu = Gauge("astrobio_mfu_ratio", "Model FLOPs utilisation (0..1).", names, registry=self.registry)
        self.labels = labels
        self.step_seconds = histogram("astrobio_step_seconds", "Wall time per optimizer step.")
        self.data_wait = histogram("astrobio_data_wait_seconds", "Time waiting for data per optimizer step.")
        self.ckpt_write = histogram("astrobio_checkpoint_write_seconds",
                                    "Time to write a checkpoint, start to renamed into place (background or not).")
        self.ckpt_blocked = histogram("astrobio_checkpoint_blocked_seconds",
                                      "Time training was blocked by a checkpoint save or a wait for one in flight.")
        self.ckpt_failures = counter("astrobio_checkpoint_failures", "Checkpoint writes that failed.")
        self.resumes = counter("astrobio_train_resumes", "Resumes from a checkpoint.")
        nonfinite = Counter("astrobio_nonfinite_events", "Non-finite loss or gradient norms.", [*names, "kind"],
                            registry=self.registry)
        self.nonfinite = {kind: nonfinite.labels(**labels, kind=kind) for kind in ("loss", "grad")}
        self.memory = gauge("astrobio_process_memory_bytes", "Resident memory of the process.")
        self.device = device
        if device.type == "cuda":
            self.gpu_allocated = gauge("astrobio_gpu_memory_allocated_bytes", "CUDA memory allocated by tensors.")
            self.gpu_reserved = gauge("astrobio_gpu_memory_reserved_bytes", "CUDA memory reserved by the allocator.")
            self.gpu_peak = gauge("astrobio_gpu_memory_peak_bytes", "Peak CUDA memory allocated.")
            self.gpu_total = gauge("astrobio_gpu_memory_total_bytes", "Total memory of the CUDA device.")
            self.gpu_total.set(torch.cuda.get_device_properties(device).total_memory)
        self._server = None

    def serve(self, port: int) -> None:
        self._server, _ = start_http_server(port, addr="0.0.0.0", registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def update_memory(self) -> None:
        self.memory.set(process_memory_bytes())
        if self.device.type == "cuda":
            self.gpu_allocated.set(torch.cuda.memory_allocated(self.device))
            self.gpu_reserved.set(torch.cuda.memory_reserved(self.device))
            self.gpu_peak.set(torch.cuda.max_memory_allocated(self.device))


class Telemetry:
    """Fans each training event out to every enabled sink; file and console sinks live on rank 0."""

    def __init__(self, cfg: LoggingConfig, run_dir: Path | RunFolder, component: str, rank: int, local_rank: int,
                 device: torch.device, max_steps: int, run_config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.device = device
        self.max_steps = max_steps
        self.is_main = rank == 0
        self.prom = PrometheusMetrics(component, rank, device)
        if cfg.metrics_port:
            self.prom.serve(cfg.metrics_port + local_rank)
        self._peak = peak_flops(device)
        self._window: list[StepRecord] = []
        self._window_started = self._started = time.perf_counter()
        self._first_step = 0
        self.log_every = 10
        self.run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self._jsonl: Any = None  # local: opened by start(), after the file is cut back to the resumed step
        self._remote_text: list[str] | None = None  # object store: the whole object, PUT again each window
        self._pending: list[dict[str, Any]] = []  # this window's step records, written at its end
        self._tb = None
        self._wandb = None
        if self.is_main and cfg.tensorboard:
            tb = require("torch.utils.tensorboard", "tensorboard")
            self._tb = tb.SummaryWriter(log_dir=self.run.url("tensorboard"))
        if self.is_main and cfg.wandb:
            wandb = require("wandb", "wandb")
            self._wandb = wandb.init(project=cfg.wandb_project, name=self.run.name,
                                     dir=None if self.run.remote else self.run.url(),
                                     config=run_config, resume="allow")

    def _write(self, record: dict[str, Any]) -> None:
        """Write this window's step records, then `record`, and flush once."""
        records = [*self._pending, record]
        self._pending = []
        lines = "".join(json.dumps(r) + "\n" for r in records)
        if self._jsonl is not None:
            self._jsonl.write(lines)
            self._jsonl.flush()
        elif self._remote_text is not None:  # no append on an object store: one PUT of the whole object
            self._remote_text.append(lines)
            self.run.write_text(METRICS_FILE, "".join(self._remote_text))
        if self._tb is None and self._wandb is None:
            return
        for r in records:
            scalars = {f"{r['kind']}/{k}": v for k, v in r.items()
                       if k not in ("step", "kind", "time") and isinstance(v, int | float)}
            if self._tb is not None:
                for key, value in scalars.items():
                    self._tb.add_scalar(key, value, r["step"])
            if self._wandb is not None:
                self._wandb.log(scalars, step=r["step"])

    def on_resume(self, step: int, path: str) -> None:
        self.prom.resumes.inc()
        if self.is_main:
            log.info("resumed from step %d (%s, verified against its manifest)", step, path)

    def on_step(self, rec: StepRecord) -> None:
        p, now = self.prom, time.time()
        p.step.set(rec.step)
        p.last_step_ts.set(now)
        p.loss.set(rec.loss)
        p.lr.set(rec.lr)
        p.grad_norm.set(rec.grad_norm)
        p.step_seconds.observe(rec.step_seconds)
        p.data_wait.observe(rec.data_wait_seconds)
        self._window.append(rec)
        record = {"kind": "train", "step": rec.step, "time": now, "loss": rec.loss, "lr": rec.lr,
                  "grad_norm": rec.grad_norm, "step_seconds": rec.step_seconds,
                  "data_wait_seconds": rec.data_wait_seconds}
        if rec.step % self.log_every == 0 or rec.step == self.max_steps:
            self._flush_window(record)
            self._write(record)
        else:
            self._pending.append(record)

    def _flush_window(self, record: dict[str, Any]) -> None:
        elapsed = max(time.perf_counter() - self._window_started, 1e-9)
        samples = sum(r.samples for r in self._window)
        tokens = sum(r.tokens for r in self._window)
        sps = samples / elapsed
        record["samples_per_second"] = sps
        self.prom.samples_ps.set(sps)
        if tokens:
            record["tokens_per_second"] = tokens / elapsed
            self.prom.tokens_ps.labels(**self.prom.labels).set(tokens / elapsed)
        flops = [r.flops for r in self._window]
        if self._peak and all(f is not None for f in flops):
            mfu = sum(flops) / elapsed / self._peak
            record["mfu"] = mfu
            self.prom.mfu.labels(**self.prom.labels).set(mfu)
        self.prom.update_memory()
        if self.device.type == "cuda":
            record["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
        self._window = []
        self._window_started = time.perf_counter()
        if self.is_main and self.cfg.console:
            done = record["step"]
            per_step = (time.perf_counter() - self._started) / max(done - self._first_step, 1)
            eta = time.strftime("%H:%M:%S", time.gmtime(per_step * (self.max_steps - done)))
            extra = f" tok/s {record['tokens_per_second']:.0f}" if "tokens_per_second" in record else ""
            extra += f" mfu {record['mfu']:.1%}" if "mfu" in record else ""
            log.info("step %d/%d loss %.4f lr %.2e gnorm %.3f samples/s %.0f%s eta %s", done, self.max_steps,
                     record["loss"], record["lr"], record["grad_norm"], sps, extra, eta)

    def start(self, first_step: int, log_every: int) -> None:
        """Open metrics.jsonl (rank 0) holding only records up to `first_step`, the step the run resumed from."""
        if self.is_main:
            kept = repair_metrics(self.run, first_step)
            if self.run.remote:
                self._remote_text = [kept]
            else:
                self._jsonl = open(self.run.local / METRICS_FILE, "a")  # noqa: SIM115
        self._first_step = first_step
        self.log_every = log_every
        self._started = self._window_started = time.perf_counter()

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        if "loss" in metrics:
            self.prom.eval_loss.set(metrics["loss"])
        self._write({"kind": "eval", "step": step, "time": time.time(), **metrics})
        if self.is_main and self.cfg.console:
            log.info("eval step %d %s", step, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def on_checkpoint(self, step: int, write_seconds: float) -> None:
        """A checkpoint is complete (observed when the loop learns it: a background write at the next wait)."""
        self.prom.ckpt_write.observe(write_seconds)
        self._write({"kind": "checkpoint", "step": step, "time": time.time(), "seconds": write_seconds})

    def on_checkpoint_blocked(self, seconds: float) -> None:
        self.prom.ckpt_blocked.observe(seconds)

    def on_checkpoint_failure(self, step: int, problem: str, continues: bool = True) -> None:
        """One error line (rank 0) and one count."""
        self.prom.ckpt_failures.inc()
        self._write({"kind": "checkpoint", "step": step, "time": time.time(), "failed": problem})
        if self.is_main:
            log.error("checkpoint at step %d failed: %s; %s", step, problem,
                      "training continues" if continues else "stopping")

    def on_nonfinite(self, step: int, kind: str) -> None:
        self.prom.nonfinite[kind].inc()
        self._write({"kind": "nonfinite", "step": step, "time": time.time(), "what": kind})

    def flush(self) -> None:
        """Write this window's buffered step records now; the loop calls it before each checkpoint, so a checkpoint
        of step N never exists while records up to N are still only in memory (a kill would lose them for good)."""
        if self._pending:
            self._write(self._pending.pop())

    def close(self) -> None:
        """Flush sinks; keep /metrics up for `metrics_linger_seconds` so the last values get scraped."""
        self.prom.update_memory()
        self.flush()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self.cfg.metrics_port and self.cfg.metrics_linger_seconds:
            threading.Event().wait(self.cfg.metrics_linger_seconds)
        self.prom.stop()


# -- Report metrics: the named metrics of the run report, pushed once to a Pushgateway -----------------------
# The trainer's /metrics server has stopped by the time the report is written (after fit), so these go the way
# of batch jobs: one push, replacing the run's previous one (job astrobio-train, grouping labels run and, in a
# pod, namespace).
REPORT_METRIC = "astrobio_eval_metric"
REPORT_PUSH_JOB = "astrobio-train"


def report_metric_split(key: str) -> str:
    """The split a report metric was scored on, from its name: val_* -> val, test_* -> test, else report (a
    component's own held-out or generation score, named as in report.md)."""
    for split in ("val", "test"):
        if key.startswith(f"{split}_"):
            return split
    return "report"


def push_report_metrics(component: str, run_name: str, metrics: dict[str, float], url: str | None = None) -> bool:
    """Push the report's metrics as astrobio_eval_metric{component,metric,split} to URL (default
    $PUSHGATEWAY_URL; none: nothing is pushed). Non-finite values are left out; a failed push is one warning,
    never fatal to the run. Returns whether the push happened."""
    from prometheus_client import push_to_gateway

    from datajobs.metrics import PUSHGATEWAY_ENV

    url = url or os.environ.get(PUSHGATEWAY_ENV)
    if not url:
        return False
    registry = CollectorRegistry()
    gauge = Gauge(REPORT_METRIC, "Evaluation metric of the run report (set once, when the report is written).",
                  ["component", "metric", "split"], registry=registry)
    for key, value in metrics.items():
        if math.isfinite(value):
            gauge.labels(component=component, metric=key, split=report_metric_split(key)).set(value)
    group = {"run": run_name}
    if namespace := os.environ.get("POD_NAMESPACE"):  # in a pod (downward API): the dashboards filter on it
        group["namespace"] = namespace
    try:
        push_to_gateway(url, job=REPORT_PUSH_JOB, grouping_key=group, registry=registry)
    except OSError as exc:
        log.warning("report metrics push to %s failed: %s", url, exc)
        return False
    log.info("report metrics pushed to %s (job %s, run %s)", url, REPORT_PUSH_JOB, run_name)
    return True
