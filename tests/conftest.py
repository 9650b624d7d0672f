"""Shared test helpers: tool lookup (skips on a laptop, fails under CI=true), CLI runners, a real data root."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"


def require_tool(name: str) -> str:
    """Path of an external tool; skip the test when missing, fail when CI=true (make test installs it)."""
    path = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path:
        return path
    message = f"{name} is not installed (run `make tools`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def skip_or_fail(message: str) -> None:
    """Skip on a laptop; fail under CI=true, where everything a test needs is installed."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_module(name: str, reason: str = ""):
    """pytest.importorskip that fails under CI=true (the dev venv of CI has every extra)."""
    try:
        return __import__(name)
    except ImportError as exc:
        skip_or_fail(f"{name} is not importable ({exc}){': ' + reason if reason else ''}")


BIN = Path(sys.executable).parent


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra})
    return env


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory):
    """A real Ceph RGW S3 server on 127.0.0.1 for the session (skips on a laptop without it, fails under CI)."""
    from tests.datajobs import s3server

    radosgw = require_tool("radosgw")
    server = s3server.start(tmp_path_factory.mktemp("ceph"), os.path.dirname(radosgw))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root holding exoplanet-catalogue published by the real data job from the bundled snapshot."""
    root = tmp_path_factory.mktemp("data")
    subprocess.run([BIN / "astrobio-data", "run", "exoplanet-catalogue", "--from-snapshot", "--root", str(root)],
                   check=True, capture_output=True, env=cli_env())
    return root


def planets_args(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """`astrobio-train run` on configs/planets.yaml with the test data root and run folder. The report's
    protocol evaluation (7 re-trainings) is off unless a test turns it on: only the planets model tests score it."""
    sets = [f"data.root={data_root}", f"logging.run_dir={run_dir}", "model.protocol_evaluation=false", *overrides]
    return [str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "planets.yaml"),
            *(x for s in sets for x in ("--set", s))]


def run_cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def train_losses(run: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (the last record of a step wins, as after a resume)."""
    losses: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "train":
            losses[record["step"]] = record["loss"]
    return losses


def assert_resumed(run: Path, stderr: str, step: int, started: float, expected: dict[int, float],
                   rel: float = 0.0) -> None:
    """A rerun started at time.time() `started` resumed from its checkpoint of `step`: it says so, it trained only
    the steps after it (its console step lines; the times of the metrics.jsonl records), metrics.jsonl holds each
    step of `expected` once, and every loss equals the uninterrupted run's (`rel` 0: exactly)."""
    assert f"resumed from step {step} (" in stderr, stderr[-3000:]
    console = [int(s) for s in re.findall(r"INFO step (\d+)/\d+ loss", stderr)]
    assert console and min(console) > step, f"the rerun trained steps {console[:3]}..., expected only after {step}"
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    assert [r["step"] for r in train] == sorted(expected), "metrics.jsonl should hold each step once, in order"
    assert [r["step"] for r in train if r["time"] >= started] == [s for s in sorted(expected) if s > step]
    got = {r["step"]: r["loss"] for r in train}
    worst = max(abs(got[s] - expected[s]) / max(abs(expected[s]), 1e-12) for s in expected)
    differing = [s for s in sorted(expected) if not math.isclose(got[s], expected[s], rel_tol=rel, abs_tol=0)]
    assert not differing, (f"losses differ from the uninterrupted run's at steps {differing[:5]}... "
                           f"(largest relative difference {worst:.2e}, allowed {rel:g})")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process it started (the launcher's workers run in their own sessions, so a
    process group would miss them), all listed before any is killed."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def sigterm_when(proc: subprocess.Popen, predicate, timeout: float, what: str) -> str:
    """Send SIGTERM once predicate() holds (as Kubernetes does on preemption); the process's stderr once it ended."""
    try:
        wait_for(predicate, timeout, what, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_dirs(run: Path) -> list[Path]:
    """Complete checkpoint folders of a run (renamed from their temp name only when finished), oldest first."""
    return sorted((run / "checkpoints").glob("step-*"))


def checkpoint_steps(run: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in checkpoint_dirs(run) if (p / "trainer_state.json").is_file()]
