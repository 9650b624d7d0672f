"""Helpers for the data-job tests: fixture paths, fast HTTP settings, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
FAST_HTTP = {
    "timeout_s": 1.0,
    "max_attempts": 3,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
    "retry_after_max_s": 2.0,
    "requests_per_second": 200.0,
}


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`astrobio-data ARGS` as a subprocess (stderr is JSON logs: not a TTY)."""
    return subprocess.run(
        [sys.executable, "-m", "datajobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line a failing command prints (JSON log lines aside)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]
