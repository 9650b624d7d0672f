"""Fault-injection testing aids through the CLI: a finite loss with a NaN gradient stops with exit 3."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BIN, REPO, checkpoint_steps, planets_args, run_cli, train_losses


def test_nan_gradient_with_finite_loss_exits_3_without_poisoned_checkpoint(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(planets_args(data_root, tmp_path, "train.max_steps=40", "checkpoint.every_steps=10",
                                  "checkpoint.keep_last=10", "train.early_stopping_patience=null",
                                  "train.inject_nan_at_step=15", "train.inject_nan_where=grad"))
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "non-finite grad at step 15 (here: loss " in last and "grad norm nan" in last, last
    loss_shown = float(last.split("(here: loss ")[1].split(",")[0])
    assert loss_shown == loss_shown, "the injected loss should stay finite"  # not NaN
    run = tmp_path / "planets"
    assert checkpoint_steps(run) == [10]
    assert max(train_losses(run)) == 14
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["what"]) for r in records if r["kind"] == "nonfinite"] == [(15, "grad")]


def test_injection_rank_without_step_is_a_config_error() -> None:
    result = run_cli([str(BIN / "astrobio-train"), "validate", "-c", str(REPO / "configs" / "planets.yaml"),
                      "--set", "train.inject_nan_rank=1"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.inject_nan_rank is set without train.inject_nan_at_step" in lines[0], lines
