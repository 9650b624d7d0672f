"""Chaos: a planets run killed with SIGKILL at 10 seeded random moments (some during a checkpoint write, some right
after one) and resumed each time ends equal to the uninterrupted run, step for step, with nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.chaos import leftovers
from tests.conftest import BIN, REPO, assert_resumed, cli_env, planets_args, run_cli, train_losses
from tests.trainer.conftest import QUICK

# bundle_run's config (the uninterrupted reference) with a checkpoint every 2 steps: saving does not touch the
# training, so the losses must be the same.
CHAOS = (*QUICK, "checkpoint.every_steps=2")
KILLS = 10
SEED = 3  # draws 5 kills during a write, 2 right after one, 2 between checkpoints, 1 during start-up


@pytest.mark.slow
def test_kill_9_at_random_moments_and_resume_ends_equal_to_the_uninterrupted_run(
        data_root: Path, tmp_path: Path, bundle_run: Path) -> None:
    args = planets_args(data_root, tmp_path, *CHAOS)
    run = tmp_path / "planets"
    chaos = subprocess.run([sys.executable, "-m", "bench.chaos", "--run", str(run), "--kills", str(KILLS),
                            "--seed", str(SEED), "--", *args[1:]],
                           cwd=REPO, capture_output=True, text=True, timeout=900, env=cli_env())
    assert chaos.returncode == 0, chaos.stderr[-3000:]
    tally = json.loads(chaos.stdout.strip().splitlines()[-1])
    assert tally["kills"] == KILLS and not tally["finished_before_kill"], tally
    assert tally["kills_during_write"] >= 2, tally
    assert tally["resumes"] >= tally["starts"] - 1 - tally["modes"].get("startup", 0), tally
    newest = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))

    started = time.time()
    final = run_cli(args)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_resumed(run, final.stderr, newest, started, train_losses(bundle_run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == list(range(25, 201, 25))
    assert leftovers(run) == []
    verify = run_cli([str(BIN / "astrobio-train"), "checkpoints", "verify", str(run)])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    best = "best/model.safetensors"
    assert (run / best).read_bytes() == (bundle_run / best).read_bytes(), "best weights differ"
