"""Stopped runs resume to the uninterrupted losses: SIGTERM on one process (exit 143, then rerun) and kill -9 of
two DeepSpeed ZeRO-3 ranks (rerun from the checkpoint replays the steps the killed run had already trained)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    assert_resumed,
    checkpoint_steps,
    cli_env,
    free_port,
    kill_tree,
    planets_args,
    require_module,
    run_cli,
    sigterm_when,
    train_losses,
    wait_for,
)
from tests.trainer.conftest import QUICK


@pytest.mark.slow
def test_sigterm_exits_143_and_the_rerun_continues_with_the_uninterrupted_losses(
        data_root: Path, tmp_path: Path, bundle_run: Path) -> None:
    """bundle_run is the same config uninterrupted (dropout on: the checkpoint carries the RNG state)."""
    run = tmp_path / "planets"
    proc = subprocess.Popen(planets_args(data_root, tmp_path, *QUICK), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())
    err = sigterm_when(proc, lambda: (run / "metrics.jsonl").is_file() and bool(train_losses(run)), 120,
                       "the first metrics window (step 25)")
    assert proc.returncode == 143, err[-3000:]
    last = max(train_losses(run))
    assert checkpoint_steps(run) == [last] and last < 200, last  # every_steps is 100: the SIGTERM checkpoint
    started = time.time()
    rerun = run_cli(planets_args(data_root, tmp_path, *QUICK))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_resumed(run, rerun.stderr, last, started, train_losses(bundle_run))


# Dropout on: each rank restores its own RNG state from the checkpoint.
ZERO3 = ("distributed.strategy=deepspeed", "distributed.zero_stage=3", "data.batch_size=32", "train.max_steps=40",
         "train.early_stopping_patience=null", "train.eval_every=20", "checkpoint.every_steps=10",
         "train.precision=fp32", "schedule.name=constant", "train.log_every=1")


@pytest.mark.slow
def test_kill_9_of_two_zero3_ranks_then_rerun_replays_identical_losses(data_root: Path, tmp_path: Path) -> None:
    require_module("deepspeed")
    run = tmp_path / "planets"

    def launch() -> list[str]:
        return [*planets_args(data_root, tmp_path, *ZERO3), "--nproc-per-node", "2"]

    proc = subprocess.Popen(launch(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(PET_MASTER_PORT=str(free_port())))
    try:
        wait_for(lambda: (run / "checkpoints" / "step-00000010" / "manifest.json").is_file()
                 and max(train_losses(run), default=0) >= 14, 600, "the step-10 checkpoint and step 14", proc)
        killed_run = train_losses(run)  # what the killed ranks trained; the rerun drops the steps after 10
    finally:
        kill_tree(proc)  # launcher and both ranks, no chance to checkpoint again
        proc.communicate()
    assert checkpoint_steps(run) == [10], checkpoint_steps(run)
    started = time.time()
    rerun = run_cli(launch(), PET_MASTER_PORT=str(free_port()))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(train_losses(run)) == list(range(1, 41))
    # Steps 11..K ran twice, before the kill and after the resume: the rerun must repeat the killed run's losses.
    assert max(killed_run) >= 14
    assert_resumed(run, rerun.stderr, 10, started, {**train_losses(run), **killed_run})
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [20, 40]
