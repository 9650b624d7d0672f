"""Two real runs on one run folder: the second exits 2 naming the holder; after kill -9 the lease is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import checkpoint_steps, cli_env, planets_args, run_cli, train_losses, wait_for

LONG = ("train.max_steps=100000", "train.early_stopping_patience=null", "checkpoint.every_steps=20",
        "train.eval_every=20", "train.log_every=10", "checkpoint.keep_last=2", "checkpoint.lease_timeout_seconds=2")


@pytest.mark.slow
def test_second_run_exits_2_and_a_dead_holder_is_taken_over(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "planets"
    lease_file = run / ".lease.json"
    first = subprocess.Popen(planets_args(data_root, tmp_path, *LONG), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        wait_for(lambda: 20 in checkpoint_steps(run), 120, "the first run's step-20 checkpoint", first)
        holder = json.loads(lease_file.read_text())
        assert holder["pid"] == first.pid
        live_tmp = run / "checkpoints" / f".tmp-{holder['id']}-step-99999999"  # a live holder's partial write
        live_tmp.mkdir()
        second = run_cli(planets_args(data_root, tmp_path, *LONG))
        assert second.returncode == 2, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert f"{run} is in use by pid {first.pid} on host {holder['host']}" in last, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        assert live_tmp.is_dir(), "the second run removed the live holder's temp folder"
        assert first.poll() is None, "the second run stopped the first"
        steps_before = max(train_losses(run))
        wait_for(lambda: max(train_losses(run)) > steps_before + 10, 60, "the first run to go on", first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert json.loads(lease_file.read_text())["id"] == holder["id"]  # kill -9 leaves the lease behind
    resume_from = max(checkpoint_steps(run))
    # As if the holder had run on a node that is gone: its pid cannot be checked from here, only its heartbeat.
    lease_file.write_text(json.dumps({**json.loads(lease_file.read_text()), "host": "lost-node"}) + "\n")
    time.sleep(2.5)  # the dead holder's heartbeat ages past checkpoint.lease_timeout_seconds=2
    third = run_cli(planets_args(data_root, tmp_path, *LONG[1:], f"train.max_steps={resume_from + 5}"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"took over the lease of pid {first.pid}" in third.stderr
    assert f"resumed from step {resume_from}" in third.stderr
    assert not list((run / "checkpoints").glob(".tmp-*")), "the dead holder's temp folder was left"
    assert not lease_file.exists(), "the lease was not released at the end"


def test_a_holder_whose_process_is_gone_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    """kill -9 on the same host and pod: a fresh heartbeat, but the pid no longer exists (a restarted job)."""
    from trainer.lease import Lease, LeaseHeld

    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = Lease(tmp_path, 60, "deadbeef0001")
    holder.acquire()
    holder.release()
    record = {**json.loads(json.dumps(holder.holder.__dict__)), "pid": dead.pid, "heartbeat": time.time()}
    (tmp_path / ".lease.json").write_text(json.dumps(record) + "\n")
    taker = Lease(tmp_path, 60, "deadbeef0002")
    taker.acquire()  # no wait for the 60 s timeout
    assert json.loads((tmp_path / ".lease.json").read_text())["id"] == "deadbeef0002"
    taker.release()

    alive = {**record, "pid": os.getppid()}  # a live process on this host holds it: refused
    (tmp_path / ".lease.json").write_text(json.dumps(alive) + "\n")
    with pytest.raises(LeaseHeld, match=f"in use by pid {os.getppid()}"):
        Lease(tmp_path, 60, "deadbeef0003").acquire()


def test_a_dead_holders_temp_lease_file_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    """kill -9 between writing `.lease.json.<id>.tmp` and linking or renaming it leaves the temp file behind."""
    from trainer.lease import Lease

    dead = subprocess.Popen(["true"])
    dead.wait()
    template = Lease(tmp_path, 60, "deadbeef0001").holder.__dict__
    stray = tmp_path / ".lease.json.deadbeef0001.tmp"
    stray.write_text(json.dumps({**template, "pid": dead.pid}) + "\n")
    live = tmp_path / ".lease.json.deadbeef0002.tmp"  # another starter on this host, still running
    live.write_text(json.dumps({**template, "id": "deadbeef0002", "pid": os.getppid()}) + "\n")
    lease = Lease(tmp_path, 60, "deadbeef0003")
    lease.acquire()
    lease.release()
    assert not stray.exists() and live.exists()
