"""Two real processes (gloo) through our launcher: DDP matches one process, exit codes survive, and a run stopped
by SIGTERM and then by kill -9 resumes to the uninterrupted losses."""

from __future__ import annotations

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
    run_cli,
    sigterm_when,
    train_losses,
    wait_for,
)

# Dropout off: its masks are drawn per rank, so data-parallel ranks cannot equal one process with it.
COMMON = ("train.max_steps=120", "train.early_stopping_patience=null", "train.eval_every=30",
          "checkpoint.every_steps=30", "train.precision=fp32", "model.dropout=0.0")


def launched(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [*planets_args(data_root, run_dir, "distributed.strategy=ddp", "data.batch_size=32", *COMMON,
                          *overrides), "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def ddp_pair(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of two uninterrupted DDP ranks with 32 samples each."""
    run_dir = tmp_path_factory.mktemp("ddp")
    result = run_cli(launched(data_root, run_dir), PET_MASTER_PORT=str(free_port()))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "planets"


def test_ddp_two_ranks_match_one_rank_with_the_same_global_batch(data_root: Path, tmp_path: Path,
                                                                 ddp_pair: Path) -> None:
    single = run_cli(planets_args(data_root, tmp_path / "one", "data.batch_size=64", *COMMON))
    assert single.returncode == 0, single.stderr
    one, two = train_losses(tmp_path / "one" / "planets"), train_losses(ddp_pair)
    assert sorted(one) == sorted(two) == list(range(1, 121))
    # Same samples per step; only the order of float reductions differs (fp32): tolerance 1e-4 relative.
    worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"
    assert (ddp_pair / "report.md").is_file()


def test_nan_on_one_rank_stops_both_with_exit_3(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(launched(data_root, tmp_path, "train.inject_nan_at_step=40", "train.inject_nan_rank=1"),
                     PET_MASTER_PORT=str(free_port()))
    assert result.returncode == 3, result.stderr[-3000:]
    assert checkpoint_steps(tmp_path / "planets") == [30]
    assert result.stderr.count("non-finite loss at step 40") == 2  # both ranks stopped at the same step


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(PET_MASTER_PORT=str(free_port())))


@pytest.mark.slow
def test_sigterm_then_kill_9_then_rerun_ends_with_the_uninterrupted_losses(data_root: Path, tmp_path: Path,
                                                                           ddp_pair: Path) -> None:
    """SIGTERM to the launcher after step 30: every rank checkpoints, exit 143. The rerun resumes there and is
    killed with SIGKILL (launcher and ranks) once the step-60 checkpoint exists. The last run resumes from 60."""
    run = tmp_path / "planets"
    proc = start(launched(data_root, tmp_path))
    err = sigterm_when(proc, lambda: 30 in checkpoint_steps(run), 120, "the step-30 checkpoint")
    assert proc.returncode == 143, err[-3000:]
    stopped = max(train_losses(run))
    assert 30 < stopped < 60 and checkpoint_steps(run) == [30, stopped], (stopped, checkpoint_steps(run))
    assert sorted(p.name for p in (run / "checkpoints" / f"step-{stopped:08d}").glob("rng-rank*.npz")) == [
        "rng-rank0.npz", "rng-rank1.npz"]

    proc = start(launched(data_root, tmp_path))
    try:
        wait_for(lambda: (run / "checkpoints" / "step-00000060" / "manifest.json").is_file(), 120,
                 "the step-60 checkpoint", proc)
    finally:
        kill_tree(proc)
        _, err = proc.communicate()
    assert f"resumed from step {stopped} (" in err, err[-3000:]
    assert max(checkpoint_steps(run)) == 60, checkpoint_steps(run)

    started = time.time()
    rerun = run_cli(launched(data_root, tmp_path), PET_MASTER_PORT=str(free_port()))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_resumed(run, rerun.stderr, 60, started, train_losses(ddp_pair))


def test_ddp_config_runs_on_a_single_process(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(planets_args(data_root, tmp_path, "distributed.strategy=ddp", *COMMON))
    assert result.returncode == 0, result.stderr
    assert "| world size | 1 |" in (tmp_path / "planets" / "report.md").read_text()


def test_trainjob_v2_env_pet_only_one_process_per_node(data_root: Path, tmp_path: Path) -> None:
    """Trainer v2 sets only PET_*: two 'nodes' with one process each must form one world of size 2."""
    port = str(free_port())
    procs = [
        subprocess.Popen(planets_args(data_root, tmp_path, "distributed.strategy=ddp", "data.batch_size=32", *COMMON),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli_env(PET_NNODES="2", PET_NPROC_PER_NODE="1", PET_NODE_RANK=str(node),
                                     PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port))
        for node in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "| world size | 2 |" in (tmp_path / "planets" / "report.md").read_text()
