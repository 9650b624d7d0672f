"""Start N worker processes on this node (torch elastic) and exit with the workers' own exit code.

`torchrun` exits 1 when a worker fails or when it is itself signalled, which would turn our documented
exit codes (2 config/data, 3 divergence, 143 preempted) into one permanent failure under a PyTorchJob's
`restartPolicy: ExitCode`. This launcher reads the same PET_* env the Kubeflow operator sets for torchrun,
runs the workers through torch.distributed.launcher, and maps failures back to the worker exit code.
"""

from __future__ import annotations

import logging
import os
import sys

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

log = logging.getLogger("astrobio.launch")
PREEMPTED = 143
SHUTDOWN_TIMEOUT_ENV = "ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PET_{name}") or default


def launch_config(nproc_per_node: int, shutdown_timeout: int) -> LaunchConfig:
    """LaunchConfig from the PET_* env (PyTorchJob v1 and TrainJob v2 both set it), else one node."""
    nnodes = int(_env("NNODES", "1").split(":")[-1])
    master = _env("MASTER_ADDR", os.environ.get("MASTER_ADDR", "127.0.0.1"))
    port = _env("MASTER_PORT", os.environ.get("MASTER_PORT", "29500"))
    node_rank = int(_env("NODE_RANK", os.environ.get("RANK", "0") if nnodes > 1 else "0"))
    rdzv_endpoint = _env("RDZV_ENDPOINT", f"{master}:{port}")
    backend = _env("RDZV_BACKEND", "static")
    configs = {"rank": node_rank} if backend == "static" else {}
    return LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc_per_node, run_id=_env("RDZV_ID", "none"),
        rdzv_backend=backend, rdzv_endpoint=rdzv_endpoint, rdzv_configs=configs, max_restarts=0,
        monitor_interval=0.5, start_method="spawn", logs_specs=DefaultLogsSpecs(), shutdown_timeout=shutdown_timeout,
    )


def exit_code_of(error: ChildFailedError) -> int:
    """The root-cause worker's exit code (signals become 128 + signal number)."""
    _, failure = error.get_first_failure()
    code = failure.exitcode
    return 128 - code if code < 0 else code


def launch(worker_argv: list[str], nproc_per_node: int) -> int:
    """Run `python -m trainer.cli <worker_argv>` on every local rank; returns the process exit code.

    On SIGTERM the workers get SHUTDOWN_TIMEOUT_ENV seconds (default 300) to write their checkpoint.
    """
    cfg = launch_config(nproc_per_node, int(os.environ.get(SHUTDOWN_TIMEOUT_ENV, "300")))
    try:
        elastic_launch(cfg, sys.executable)("-m", "trainer.cli", *worker_argv)
    except ChildFailedError as exc:
        code = exit_code_of(exc)
        log.error("a worker exited with code %d", code)
        return code
    except SignalException as exc:
        log.warning("launcher received signal %s; workers were asked to checkpoint", exc.sigval)
        return PREEMPTED
    return 0
