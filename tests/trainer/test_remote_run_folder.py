"""Run folders on a real Ceph RGW S3 server: conditional writes and the lease, a planets run writing checkpoints,
metrics, bundle and report remotely, kill -9 and resume, a second run refused, a corrupted remote shard."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import BIN, assert_resumed, cli_env, kill_tree, planets_args, run_cli, train_losses, wait_for

# 40 steps, a checkpoint every 10, one metrics PUT per step (log_every=1): long enough to be killed midway.
REMOTE = ("train.max_steps=40", "train.early_stopping_patience=null", "checkpoint.every_steps=10",
          "checkpoint.keep_last=10", "train.eval_every=10", "train.log_every=1")
LONG = ("train.max_steps=100000", "train.early_stopping_patience=null", "checkpoint.every_steps=20",
        "train.eval_every=20", "train.log_every=10", "checkpoint.keep_last=2")


@pytest.fixture
def s3(ceph, monkeypatch):
    """A fresh bucket; the S3 endpoint and keys in this process's environment (and the CLI's: run_cli copies it)."""
    for key, value in ceph.env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    bucket = f"runs-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(bucket)
    return fs, bucket


def download(fs, url: str, dest: Path) -> Path:
    """A local copy of a remote run folder, for the local helpers (train_losses, assert_resumed)."""
    fs.invalidate_cache()
    fs.get(url.removeprefix("s3://") + "/", str(dest) + "/", recursive=True)
    return dest


def manifest_exists(fs, run: str, step: int) -> bool:
    fs.invalidate_cache()
    return fs.exists(f"{run.removeprefix('s3://')}/checkpoints/step-{step:08d}/manifest.json")


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli([str(BIN / "astrobio-train"), *args])


def test_ceph_honours_conditional_puts_and_the_lease_uses_them(s3) -> None:
    from trainer.doctor import BLOCKER, check_run_folder_free
    from trainer.lease import Lease, LeaseHeld, read_run_holder
    from trainer.runfolder import RunFolder

    _, bucket = s3
    run = RunFolder(f"s3://{bucket}/runs/planets")
    token = run.create("probe", b"one")
    assert token is not None and run.create("probe", b"two") is None  # If-None-Match: *
    newer = run.replace_if("probe", b"three", token)
    assert newer is not None and run.replace_if("probe", b"four", token) is None  # If-Match on a stale ETag
    assert run.read_bytes("probe") == b"three"

    first = Lease(run, 60, "aaaaaaaaaaaa")
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match=f"s3://{bucket}/runs/planets is in use by pid"):
            Lease(run, 60, "bbbbbbbbbbbb").acquire()
        first.refresh()
        assert not first.lost and read_run_holder(run).id == "aaaaaaaaaaaa"
        (row,) = check_run_folder_free(run, 60)  # what the doctor init container reports
        assert row.status == BLOCKER and "is held by a live run: pid" in row.detail, row
        # A taker that judges the holder stale (timeout shorter than its heartbeat's age) replaces it, once.
        time.sleep(0.2)
        taker = Lease(run, 0.1, "cccccccccccc")
        taker.acquire()
        first.refresh()
        assert first.lost, "the first holder did not notice the takeover"
        taker.release()
        assert read_run_holder(run) is None
    finally:
        first.release()


@pytest.mark.slow
def test_second_run_on_an_s3_folder_exits_2_naming_the_holder(data_root: Path, tmp_path: Path, s3) -> None:
    fs, bucket = s3
    run_dir = f"s3://{bucket}/runs"
    first = subprocess.Popen(planets_args(data_root, run_dir, *LONG), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=cli_env())
    try:
        wait_for(lambda: manifest_exists(fs, f"{run_dir}/planets", 20), 180, "the step-20 checkpoint on S3", first)
        holder = json.loads(fs.cat_file(f"{bucket}/runs/planets/.lease.json"))
        assert holder["pid"] == first.pid
        second = run_cli(planets_args(data_root, run_dir, *LONG))
        assert second.returncode == 2, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert f"{run_dir}/planets is in use by pid {first.pid} on host {holder['host']}" in last, last
        assert first.poll() is None, "the second run stopped the first"
    finally:
        kill_tree(first)
        first.communicate()


@pytest.mark.slow
def test_planets_on_s3_kill_9_resume_and_a_corrupted_shard(data_root: Path, tmp_path: Path, s3) -> None:
    fs, bucket = s3
    # The uninterrupted reference, on S3 too.
    ref_dir = f"s3://{bucket}/reference"
    done = run_cli(planets_args(data_root, ref_dir, *REMOTE))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {ref_dir}/planets/report.md" in done.stdout
    names = set(fs.ls(f"{bucket}/reference/planets", detail=False, refresh=True))
    for name in ("config.yaml", "metrics.jsonl", "report.md", "loss.png", "best", "checkpoints"):
        assert f"{bucket}/reference/planets/{name}" in names, names
    assert not fs.exists(f"{bucket}/reference/planets/.lease.json"), "the lease was not released"
    info = json.loads(fs.cat_file(f"{bucket}/reference/planets/best/bundle.json"))
    assert info["complete"] and info["metrics"], info
    listing = cli("checkpoints", "list", f"{ref_dir}/planets")
    assert listing.returncode == 0, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()] == [f"step-{s:08d}" for s in (10, 20, 30, 40)]
    assert all(line.endswith(" manifest") for line in listing.stdout.splitlines())
    verify = cli("checkpoints", "verify", f"{ref_dir}/planets")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    reference = train_losses(download(fs, f"{ref_dir}/planets", tmp_path / "reference"))
    assert sorted(reference) == list(range(1, 41))

    # kill -9 once step 10 is checkpointed; the rerun (saving in the background) takes over the dead lease (same
    # host, process gone) and resumes.
    run_dir = f"s3://{bucket}/runs"
    run = f"{run_dir}/planets"
    proc = subprocess.Popen(planets_args(data_root, run_dir, *REMOTE), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        wait_for(lambda: manifest_exists(fs, run, 10), 180, "the step-10 checkpoint on S3", proc)
    finally:
        kill_tree(proc)
        proc.communicate()
    resume_from = max(s for s in (10, 20, 30) if manifest_exists(fs, run, s))
    started = time.time()
    rerun = run_cli(planets_args(data_root, run_dir, *REMOTE, "checkpoint.async_save=true"))  # background writes
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    local = download(fs, run, tmp_path / "resumed")
    assert_resumed(local, rerun.stderr, resume_from, started, reference)

    # A flipped byte range in the newest remote shard: verify names it, resume skips it and writes it again.
    shard = next(p for p in fs.ls(f"{bucket}/runs/planets/checkpoints/step-00000040", detail=False, refresh=True)
                 if p.endswith(".distcp"))
    data = bytearray(fs.cat_file(shard))
    data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
    fs.pipe_file(shard, bytes(data))
    damaged = cli("checkpoints", "verify", run)
    assert damaged.returncode == 2
    assert "step-00000040  DAMAGED: __0_0.distcp does not match its sha256" in damaged.stdout, damaged.stdout
    again = run_cli(planets_args(data_root, run_dir, *REMOTE))
    assert again.returncode == 0, again.stderr[-3000:]
    assert sum("step-00000040 is damaged" in line for line in again.stderr.splitlines()) == 1, again.stderr[-3000:]
    assert "resumed from step 30 (" in again.stderr
    assert cli("checkpoints", "verify", run).returncode == 0
    copy = download(fs, run, tmp_path / "again")
    assert train_losses(copy) == reference

    # predict reads the bundle straight from the bucket: the same predictions as from a local copy of it.
    import pyarrow.csv as pcsv

    from tests.trainer.bundle_helpers import held_out

    pcsv.write_csv(held_out(copy)[2], tmp_path / "held_out.csv")
    outputs = []
    for model in (run, str(copy)):
        out = tmp_path / f"out-{len(outputs)}.csv"
        predicted = cli("predict", "-m", model, "--input", str(tmp_path / "held_out.csv"), "--output", str(out))
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("where", ["unreachable-endpoint", "unwritable-path"])
def test_a_run_folder_that_cannot_be_written_stops_in_one_line(data_root: Path, tmp_path: Path, where: str) -> None:
    """No object store behind the URL (connection refused), or a local path that cannot be created: exit 2 and
    one line naming the run folder and what to check, not a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run_dir = "s3://astrobio-nowhere/runs" if where == "unreachable-endpoint" else str(blocker / "runs")
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_MAX_ATTEMPTS": "1"}
    proc = run_cli(planets_args(data_root, run_dir), timeout=120, **env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("astrobio-train: error:")]
    assert f"run folder {run_dir}/planets cannot be written" in line and "logging.run_dir" in line
