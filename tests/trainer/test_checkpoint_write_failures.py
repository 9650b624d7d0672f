"""Checkpoint writes failing on a size-limited filesystem: one line each, training goes on, exit 4 at the limit.

The limit is RLIMIT_FSIZE (`ulimit -f`) in the trainer's process, with SIGXFSZ ignored so a write past it
fails with EFBIG (inside DCP's writer; torch's stream writer turns it into a RuntimeError, which reaches the
trainer wrapped in DCP's CheckpointException, a BaseException). It needs no
privileges, unlike mounting a small tmpfs, and limits the real kernel write path the same way for every file
larger than the limit: the DCP shard (~240 kB at this model size) fails, while metrics.jsonl, the report and
the best weights (~40 kB) stay under it.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
from pathlib import Path

from tests.conftest import cli_env, planets_args, train_losses

LIMIT_BYTES = 150_000


def limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def assert_three_failures_then_exit_4(result: subprocess.CompletedProcess, run: Path, trained_to: int) -> None:
    """Failures at steps 10, 20 and 30: one line each, the first two continue, the third stops with exit 4."""
    assert result.returncode == 4, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    failed = [line for line in lines if "failed: rank 0: " in line]
    assert [line.split("checkpoint at step ")[1].split()[0] for line in failed] == ["10", "20", "30"], lines
    assert [line.endswith("training continues") for line in failed] == [True, True, False]
    assert "3 checkpoint writes in a row failed, the last at step 30" in lines[-1]
    assert not any("Traceback" in line for line in lines), result.stderr[-3000:]
    assert max(train_losses(run)) == trained_to
    assert list((run / "checkpoints").iterdir()) == []  # no step folder, no temp folder left
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "checkpoint" and "failed" in r] == [10, 20, 30]
    assert (run / "best" / "model.safetensors").is_file()


def test_failing_checkpoint_writes_continue_then_stop_with_exit_4(data_root: Path, tmp_path: Path) -> None:
    args = planets_args(data_root, tmp_path, "train.max_steps=40", "train.early_stopping_patience=null",
                        "checkpoint.every_steps=10", "train.eval_every=10", "train.log_every=10",
                        "checkpoint.max_consecutive_failures=3")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=cli_env(),
                            preexec_fn=limit_file_size)
    assert_three_failures_then_exit_4(result, tmp_path / "planets", trained_to=30)  # trained on after 10 and 20
