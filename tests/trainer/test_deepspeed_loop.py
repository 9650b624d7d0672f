"""DeepSpeed ZeRO driven by the shared loop on CPU (gloo): matches plain training, resumes exactly, stops on NaN."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import checkpoint_dirs, free_port, planets_args, require_module, run_cli, train_losses

require_module("deepspeed")

# Dropout off: its masks are drawn per rank, so data-parallel ranks cannot equal one process with it.
COMMON = ("train.max_steps=40", "train.early_stopping_patience=null", "train.eval_every=20",
          "checkpoint.every_steps=20", "train.precision=fp32", "schedule.name=constant", "model.dropout=0.0")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_ranks_matches_one_plain_process(data_root: Path, tmp_path: Path, stage: int) -> None:
    plain = run_cli(planets_args(data_root, tmp_path / "plain", "data.batch_size=64", *COMMON))
    assert plain.returncode == 0, plain.stderr
    zero = run_cli([*planets_args(data_root, tmp_path / "zero", "distributed.strategy=deepspeed",
                                  f"distributed.zero_stage={stage}", "data.batch_size=32", *COMMON),
                    "--nproc-per-node", "2"], PET_MASTER_PORT=str(free_port()))
    assert zero.returncode == 0, zero.stderr[-3000:]
    one, two = train_losses(tmp_path / "plain" / "planets"), train_losses(tmp_path / "zero" / "planets")
    assert sorted(one) == sorted(two) == list(range(1, 41))
    worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"
    assert (tmp_path / "zero" / "planets" / "best" / "model.safetensors").is_file()


def test_resume_continues_exactly_and_loads_weights_only(data_root: Path, tmp_path: Path) -> None:
    ds = ("distributed.strategy=deepspeed", *COMMON)
    whole = run_cli(planets_args(data_root, tmp_path / "whole", *ds))
    assert whole.returncode == 0, whole.stderr[-3000:]
    first = run_cli(planets_args(data_root, tmp_path / "split", *ds, "train.max_steps=20"))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(planets_args(data_root, tmp_path / "split", *ds))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 20" in second.stderr
    expected, got = train_losses(tmp_path / "whole" / "planets"), train_losses(tmp_path / "split" / "planets")
    assert [got[s] for s in range(21, 41)] == [expected[s] for s in range(21, 41)]
    assert [d.name for d in checkpoint_dirs(tmp_path / "split" / "planets")] == ["step-00000020", "step-00000040"]


def test_nan_stops_with_exit_3_and_no_checkpoint_after(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(planets_args(data_root, tmp_path, "distributed.strategy=deepspeed", *COMMON,
                                  "train.inject_nan_at_step=30"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "non-finite loss at step 30" in result.stderr
    assert [d.name for d in checkpoint_dirs(tmp_path / "planets")] == ["step-00000020"]
