"""Async checkpoints (checkpoint.async_save) through the CLI: the same files and losses as synchronous saves.

Each test runs real trainer processes (all marked slow: 1-6 minutes each on the shared 2-core machine). The
reference is a synchronous run of the same settings: DCP shards and RNG files of every step hash the same (the
background write captured the step's state, not a later one), and the losses of a resumed run equal the
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import (
    BIN,
    checkpoint_steps,
    cli_env,
    free_port,
    planets_args,
    require_module,
    run_cli,
    train_losses,
    wait_for,
)
from tests.llm.conftest import QUICK, llm_args
from tests.llm.test_llm_distributed import FSDP, finish, start_pair
from tests.trainer.conftest import CHECKPOINTED
from tests.trainer.test_checkpoint_write_failures import assert_three_failures_then_exit_4, limit_file_size

ASYNC = "checkpoint.async_save=true"


def shard_hashes(run: Path) -> dict[str, dict[str, str]]:
    """step folder -> sha256 of each DCP shard and RNG file (from the manifest; `.metadata` names the folder and
    trainer_state.json the config digest, so they differ between runs)."""
    out = {}
    for folder in sorted((run / "checkpoints").glob("step-*")):
        files = json.loads((folder / "manifest.json").read_text())["files"]
        out[folder.name] = {k: v["sha256"] for k, v in files.items() if k.endswith((".distcp", ".npz"))}
    return out


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def position(recs: list[dict], kind: str, step: int) -> int:
    """Index of the first record of this kind and step in metrics.jsonl."""
    return next(i for i, r in enumerate(recs) if r["kind"] == kind and r["step"] == step)


def verify_ok(run: Path) -> None:
    result = run_cli([str(BIN / "astrobio-train"), "checkpoints", "verify", str(run)])
    assert result.returncode == 0, result.stdout + result.stderr


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def series(exposition: str, name: str) -> float:
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", exposition, re.M)
    return float(match.group(1)) if match else -1.0


@pytest.mark.slow
def test_async_run_writes_in_the_background_what_a_sync_run_writes(data_root: Path, tmp_path: Path,
                                                                   checkpointed: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC, f"logging.metrics_port={port}",
                                         "logging.metrics_linger_seconds=15"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        wait_for(lambda: series(scrape(port), "astrobio_checkpoint_write_seconds_count") == 3, 240,
                 "three checkpoints in the scrape", proc)
        exposition = scrape(port)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    run = tmp_path / "planets"
    assert train_losses(run) == train_losses(checkpointed)
    assert shard_hashes(run) == shard_hashes(checkpointed)
    assert len(shard_hashes(run)) == 3
    best = "best/model.safetensors"
    assert (run / best).read_bytes() == (checkpointed / best).read_bytes()
    verify_ok(run)
    # Blocked: each save call, and the wait for the save in flight before best weights are written.
    assert series(exposition, "astrobio_checkpoint_blocked_seconds_count") >= 3
    assert series(exposition, "astrobio_checkpoint_failures_total") == 0

    # The step-10 save completed after training went on (async), right after it in the sync run.
    got, expected = records(run), records(checkpointed)
    assert position(got, "checkpoint", 10) > position(got, "train", 11)
    assert position(expected, "checkpoint", 10) < position(expected, "train", 11)


@pytest.mark.slow
def test_resume_from_an_async_checkpoint_is_exact(data_root: Path, tmp_path: Path, checkpointed: Path) -> None:
    """A NaN at step 25 stops the run (exit 3) while the step-20 save may still be in flight: it is finished
    and published on the way out; the rerun resumes from it with the uninterrupted run's losses."""
    stopped = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC, "train.inject_nan_at_step=25"))
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    run = tmp_path / "planets"
    assert checkpoint_steps(run) == [10, 20]
    verify_ok(run)
    resumed = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 20" in resumed.stderr
    assert train_losses(run) == train_losses(checkpointed)
    assert shard_hashes(run)["step-00000030"] == shard_hashes(checkpointed)["step-00000030"]


@pytest.mark.slow
def test_kill_9_during_a_background_write_resumes_from_the_previous_checkpoint(data_root: Path, tmp_path: Path,
                                                                              checkpointed: Path) -> None:
    """Saves every step; the process is frozen (SIGSTOP) the moment a temp folder holds a DCP shard (only the
    background thread writes shards), and killed once a write is seen in flight while frozen."""
    run = tmp_path / "planets"
    proc = subprocess.Popen(planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC, "checkpoint.every_steps=1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())

    def writing() -> list[Path]:
        return [p for p in (run / "checkpoints").glob(".tmp-*") if any(p.glob("*.distcp"))]

    try:
        wait_for(lambda: len(checkpoint_steps(run)) >= 2, 240, "two checkpoints", proc)
        for _ in range(200):
            wait_for(lambda: bool(writing()), 120, "a background write", proc)
            os.kill(proc.pid, signal.SIGSTOP)
            if writing():
                break
            os.kill(proc.pid, signal.SIGCONT)
        else:
            raise AssertionError("never froze the run during a background write")
        in_flight = writing()[0].name
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    newest = checkpoint_steps(run)[-1]
    assert in_flight.endswith(f"step-{newest + 1:08d}"), (in_flight, newest)
    verify_ok(run)  # every renamed checkpoint is complete
    resumed = run_cli(planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {newest}" in resumed.stderr
    assert train_losses(run) == train_losses(checkpointed)
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the dead holder's temp folder was removed
    verify_ok(run)


@pytest.mark.slow
def test_ddp_two_ranks_with_async_saves_write_what_sync_saves_write(data_root: Path, tmp_path: Path) -> None:
    ddp = ("distributed.strategy=ddp", "data.batch_size=32", "train.precision=fp32", "model.dropout=0.0")
    runs = {}
    for name, extra in (("sync", ()), ("async", (ASYNC,))):
        args = [*planets_args(data_root, tmp_path / name, *CHECKPOINTED, *ddp, *extra), "--nproc-per-node", "2"]
        result = run_cli(args, PET_MASTER_PORT=str(free_port()))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = tmp_path / name / "planets"
    assert train_losses(runs["async"]) == train_losses(runs["sync"])
    hashes = shard_hashes(runs["async"])
    assert hashes == shard_hashes(runs["sync"])
    assert sorted(hashes["step-00000010"]) == ["__0_0.distcp", "__1_0.distcp", "rng-rank0.npz", "rng-rank1.npz"]


@pytest.mark.slow
def test_failing_background_writes_are_counted_and_stop_the_run_with_exit_4(data_root: Path, tmp_path: Path) -> None:
    """The shard writes fail in the background (size-limited files, EFBIG): each failure is surfaced at the next
    wait point (the next save) as one line, training goes on, and the third in a row stops the run."""
    args = planets_args(data_root, tmp_path, *CHECKPOINTED, ASYNC, "train.max_steps=40",
                        "checkpoint.max_consecutive_failures=3")
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=cli_env(),
                            preexec_fn=limit_file_size)
    # The third failure is learnt at the final save's wait, after step 40.
    assert_three_failures_then_exit_4(result, tmp_path / "planets", trained_to=40)


@pytest.mark.slow
def test_fsdp_two_ranks_resume_from_an_async_checkpoint_is_exact(text_root: Path, tmp_path: Path) -> None:
    """FSDP2 x2: the step-6 save is written in the background; a NaN at step 10 stops both ranks (exit 3) and
    the save is finished on the way out; the rerun resumes from it with the same losses for steps 7-9."""
    args = llm_args(text_root, tmp_path, *QUICK, "data.batch_size=8", *FSDP, ASYNC)
    stopped = finish(start_pair([*args, "--set", "train.inject_nan_at_step=10"]))
    assert [rc for rc, _ in stopped] == [3, 3], stopped[0][1][-3000:]
    run = tmp_path / "llm-tiny"
    assert checkpoint_steps(run) == [6]
    verify_ok(run)
    first = train_losses(run)
    resumed = finish(start_pair(args))
    assert [rc for rc, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert "resumed from step 6" in resumed[0][1]
    again = train_losses(run)
    assert sorted(again) == list(range(1, 13))
    assert all(again[s] == pytest.approx(first[s], rel=1e-6, abs=0) for s in (7, 8, 9))  # as the FSDP kill test


@pytest.mark.slow
def test_deepspeed_ignores_async_save_with_one_warning_and_saves_synchronously(data_root: Path, tmp_path: Path) -> None:
    require_module("deepspeed")
    result = run_cli(planets_args(data_root, tmp_path, "train.max_steps=20", "train.early_stopping_patience=null",
                                  "checkpoint.every_steps=10", "train.eval_every=10", "train.precision=fp32",
                                  "distributed.strategy=deepspeed", ASYNC))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("checkpoint.async_save: DeepSpeedEngine writes its checkpoints synchronously") == 1
    run = tmp_path / "planets"
    assert checkpoint_steps(run) == [10, 20]
    # Synchronous: the step-10 checkpoint completed before step 11 was trained.
    assert position(records(run), "checkpoint", 10) < position(records(run), "train", 11)
    verify_ok(run)
