"""Two real processes (gloo) through our launcher: DDP matches one process, and exit codes survive."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from tests.conftest import checkpoint_steps, cli_env, free_port, planets_args, run_cli, train_losses, wait_for

# Dropout off: its masks are drawn per rank, so data-parallel ranks cannot equal one process with it.
COMMON = ("train.max_steps=60", "train.early_stopping_patience=null", "train.eval_every=30",
          "checkpoint.every_steps=30", "train.precision=fp32", "model.dropout=0.0")


def launched(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [*planets_args(data_root, run_dir, "distributed.strategy=ddp", "data.batch_size=32", *COMMON,
                          *overrides), "--nproc-per-node", "2"]


def test_ddp_two_ranks_match_one_rank_with_the_same_global_batch(data_root: Path, tmp_path: Path) -> None:
    single = run_cli(planets_args(data_root, tmp_path / "one", "data.batch_size=64", *COMMON))
    assert single.returncode == 0, single.stderr
    port = free_port()
    double = run_cli(launched(data_root, tmp_path / "two"), PET_MASTER_PORT=str(port))
    assert double.returncode == 0, double.stderr
    one, two = train_losses(tmp_path / "one" / "planets"), train_losses(tmp_path / "two" / "planets")
    assert sorted(one) == sorted(two) == list(range(1, 61))
    # Same samples per step; only the order of float reductions differs (fp32): tolerance 1e-4 relative.
    worst = max(abs(one[s] - two[s]) / abs(one[s]) for s in one)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"
    assert (tmp_path / "two" / "planets" / "report.md").is_file()


def test_nan_on_one_rank_stops_both_with_exit_3(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(launched(data_root, tmp_path, "train.inject_nan_at_step=40", "train.inject_nan_rank=1"),
                     PET_MASTER_PORT=str(free_port()))
    assert result.returncode == 3, result.stderr[-3000:]
    assert checkpoint_steps(tmp_path / "planets") == [30]
    assert result.stderr.count("non-finite loss at step 40") == 2  # both ranks stopped at the same step


def test_sigterm_to_launcher_checkpoints_every_rank_and_exits_143(data_root: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        launched(data_root, tmp_path, "train.max_steps=1000000", "checkpoint.every_steps=1000000",
                 "train.eval_every=1000000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(PET_MASTER_PORT=str(free_port())))
    run = tmp_path / "planets"
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and len(train_losses(run)) > 20, 120,
                 "20 distributed steps", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    last = max(train_losses(run))
    assert checkpoint_steps(run) == [last]
    assert sorted(p.name for p in (run / "checkpoints" / f"step-{last:08d}").glob("rng-rank*.npz")) == [
        "rng-rank0.npz", "rng-rank1.npz"]


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
