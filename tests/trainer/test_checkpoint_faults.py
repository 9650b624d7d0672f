"""Damaged checkpoints through the CLI: resume skips what does not verify, exit 2 when nothing does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import BIN, planets_args, run_cli, train_losses
from tests.trainer.conftest import CHECKPOINTED


def damage(folder: Path, how: str) -> None:
    shard = next(folder.glob("*.distcp"))
    if how == "flip":
        data = bytearray(shard.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        shard.write_bytes(bytes(data))
    elif how == "truncate":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        (folder / "manifest.json").unlink()


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest / "planets")
    return dest / "planets"


@pytest.mark.parametrize("how", ["flip", "truncate", "no_manifest"])
def test_damaged_newest_checkpoint_resumes_from_the_previous_one(data_root: Path, tmp_path: Path, checkpointed: Path,
                                                                 how: str) -> None:
    run = copy_run(checkpointed, tmp_path)
    damage(run / "checkpoints" / "step-00000030", how)
    result = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED))
    assert result.returncode == 0, result.stderr[-3000:]
    named = [line for line in result.stderr.splitlines() if "step-00000030 is damaged" in line]
    assert len(named) == 1, result.stderr[-3000:]
    assert "resumed from step 20" in result.stderr
    expected, got = train_losses(checkpointed), train_losses(run)
    assert sorted(got) == list(range(1, 31))
    assert [got[s] for s in range(21, 31)] == [expected[s] for s in range(21, 31)]
    verify = run_cli([str(BIN / "astrobio-train"), "checkpoints", "verify", str(run)])
    assert verify.returncode == 0, verify.stdout + verify.stderr  # step 30 was written again


def test_no_verified_checkpoint_exits_2_naming_the_folder(data_root: Path, tmp_path: Path, checkpointed: Path) -> None:
    run = copy_run(checkpointed, tmp_path)
    for folder in (run / "checkpoints").glob("step-*"):
        damage(folder, "flip")
    listing = run_cli([str(BIN / "astrobio-train"), "checkpoints", "list", str(run)])
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [
        "step-00000010", "step-00000020", "step-00000030"]
    verify = run_cli([str(BIN / "astrobio-train"), "checkpoints", "verify", str(run)])
    assert verify.returncode == 2
    assert all("DAMAGED: __0_0.distcp does not match its sha256" in line for line in verify.stdout.splitlines())
    result = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED))
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"no checkpoint in {run / 'checkpoints'} verifies" in last
    assert sum("is damaged" in line for line in result.stderr.splitlines()) == 3


def test_metrics_after_a_resume_hold_each_step_once_and_a_torn_line_is_repaired(
        data_root: Path, tmp_path: Path, checkpointed: Path) -> None:
    """A run stopped at step 25 (injected NaN, exit 3) has records after its step-20 checkpoint, then a line
    torn as by kill -9 is appended; the rerun keeps records up to 20 once, writes 21-30 once."""
    stopped = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED, "train.inject_nan_at_step=25"))
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    metrics = tmp_path / "planets" / "metrics.jsonl"
    assert max(train_losses(tmp_path / "planets")) == 24
    with open(metrics, "a") as f:
        f.write('{"kind": "train", "step": 2')
    resumed = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 20" in resumed.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line parses
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 31))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [10, 20, 30]
    expected = train_losses(checkpointed)
    assert {r["step"]: r["loss"] for r in records if r["kind"] == "train"} == expected
