"""Two real processes with the env a 2-replica PyTorchJob injects (gloo): ddp and fsdp match one process,
kill + resume continues the same losses, and SIGTERM / NaN on one rank stop both ranks together."""

from __future__ import annotations

import signal
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
    run_cli,
    train_losses,
    wait_for,
)
from tests.llm.conftest import QUICK, llm_args

pytestmark = pytest.mark.slow  # every test starts two LLM ranks (tens of seconds each on 2 CPU cores)


def pytorchjob_env(rank: int, port: int) -> dict[str, str]:
    """What training-operator v1.9 sets in replica `rank` of a 2-replica job (Master + 1 Worker), no torchrun:
    RANK is the pod rank, LOCAL_RANK is not set."""
    return cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), PET_NNODES="2",
                   PET_NODE_RANK=str(rank), PET_NPROC_PER_NODE="auto")


def start_pair(args: list[str]) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=pytorchjob_env(rank, port)) for rank in (0, 1)]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
        out.append((p.returncode, err))
    return out


def two_ranks(text_root: Path, run_dir: Path, *overrides: str) -> list[tuple[int, str]]:
    return finish(start_pair(llm_args(text_root, run_dir, *QUICK, "data.batch_size=8", *overrides)))


FSDP = ("distributed.strategy=fsdp", "distributed.fsdp_param_dtype=float32")


@pytest.fixture(scope="module")
def single(text_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Losses of one process with the global batch of 16 windows."""
    run_dir = tmp_path_factory.mktemp("one")
    result = run_cli(llm_args(text_root, run_dir, *QUICK, "data.batch_size=16"))
    assert result.returncode == 0, result.stderr[-3000:]
    return train_losses(run_dir / "llm-tiny")


@pytest.fixture(scope="module")
def fsdp_pair(text_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """Losses of two fsdp replicas with 8 windows each, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("fsdp")
    results = two_ranks(text_root, run_dir, *FSDP)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(err[-2000:] for _, err in results)
    return train_losses(run_dir / "llm-tiny")


def assert_same_curve(a: dict[int, float], b: dict[int, float]) -> None:
    assert sorted(a) == sorted(b) == list(range(1, 13))
    # Same 16 windows per step split 8 + 8; fp32 everywhere, so only the order of float reductions
    # (gradient all-reduce / reduce-scatter) differs: tolerance 1e-4 relative on every step's loss.
    worst = max(abs(a[s] - b[s]) / a[s] for s in a)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"


def test_two_ddp_replicas_match_one_process(text_root: Path, tmp_path: Path, single: dict[int, float]) -> None:
    results = two_ranks(text_root, tmp_path, "distributed.strategy=ddp")
    assert [rc for rc, _ in results] == [0, 0], "\n".join(err[-2000:] for _, err in results)
    assert_same_curve(single, train_losses(tmp_path / "llm-tiny"))


def test_two_fsdp_replicas_match_one_process(single: dict[int, float], fsdp_pair: dict[int, float]) -> None:
    assert_same_curve(single, fsdp_pair)


def test_fsdp_kill_and_resume_continues_with_identical_losses(text_root: Path, tmp_path: Path,
                                                               fsdp_pair: dict[int, float]) -> None:
    run = tmp_path / "llm-tiny"
    procs = start_pair(llm_args(text_root, tmp_path, *QUICK, "data.batch_size=8", *FSDP,
                                "train.max_steps=100000", "train.eval_every=100000"))
    try:
        wait_for(lambda: 6 in checkpoint_steps(run), 240, "the step-6 checkpoint", procs[0])
    finally:
        for p in procs:
            kill_tree(p)  # the whole pod at once: no chance to checkpoint again
    finish(procs)
    assert checkpoint_steps(run) == [6]  # killed long before step 12
    started = time.time()
    results = two_ranks(text_root, tmp_path, *FSDP)
    assert [rc for rc, _ in results] == [0, 0], "\n".join(err[-2000:] for _, err in results)
    assert_resumed(run, results[0][1], 6, started, fsdp_pair, rel=1e-6)


def test_sigterm_to_one_rank_checkpoints_both_exits_143_and_the_rerun_continues(
        text_root: Path, tmp_path: Path, fsdp_pair: dict[int, float]) -> None:
    run = tmp_path / "llm-tiny"
    procs = start_pair(llm_args(text_root, tmp_path, *QUICK, "data.batch_size=8", *FSDP,
                                "train.max_steps=100000", "checkpoint.every_steps=100000",
                                "train.eval_every=100000"))
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and len(train_losses(run)) >= 3, 240, "3 steps",
                 procs[0])
        procs[1].send_signal(signal.SIGTERM)  # only the worker replica is preempted
    finally:
        results = finish(procs)
    assert [rc for rc, _ in results] == [143, 143], results[0][1][-2000:] + results[1][1][-2000:]
    last = max(train_losses(run))
    assert checkpoint_steps(run) == [last] and last < 12, last
    started = time.time()
    results = two_ranks(text_root, tmp_path, *FSDP)  # the 12-step run of fsdp_pair, from the SIGTERM checkpoint
    assert [rc for rc, _ in results] == [0, 0], "\n".join(err[-2000:] for _, err in results)
    assert_resumed(run, results[0][1], last, started, fsdp_pair, rel=1e-6)


def test_nan_on_one_rank_stops_both_with_exit_3(text_root: Path, tmp_path: Path) -> None:
    results = two_ranks(text_root, tmp_path, "distributed.strategy=fsdp", "train.inject_nan_at_step=8",
                        "train.inject_nan_rank=1")
    assert [rc for rc, _ in results] == [3, 3], "\n".join(err[-2000:] for _, err in results)
    assert all("non-finite loss at step 8" in err for _, err in results)
    assert checkpoint_steps(tmp_path / "llm-tiny") == [6]


def test_fsdp_builds_on_the_meta_device_and_trains(text_root: Path, tmp_path: Path) -> None:
    result = run_cli(llm_args(text_root, tmp_path, *QUICK, "data.batch_size=8", *FSDP, "model.init_on_meta=true"))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(tmp_path / "llm-tiny")
    assert 7.0 < losses[1] < 9.0 and losses[12] < losses[1] - 0.5  # ~ln(4096) at start, then learning
