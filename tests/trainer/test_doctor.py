"""`astrobio-train doctor`: each broken precondition is a blocker row naming its fix, exit 2. The checks run in
this process through the CLI's main (one torch import for the file); the entrypoint's exit codes and one-line
error run as subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, cli_env, run_cli
from trainer.cli import main
from trainer.lease import LEASE_FILE, read_holder

PLANETS = REPO / "configs" / "planets.yaml"
HOLD_LEASE = ("import sys, time; from pathlib import Path; from trainer.lease import Lease, new_holder_id; "
              "Lease(Path(sys.argv[1]), float(sys.argv[2]), new_holder_id()).acquire(); print('held', flush=True); "
              "time.sleep(600)")


def doctor(capsys: pytest.CaptureFixture, config: Path, *sets: str,
           extra: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(["doctor", "-c", str(config), *extra, *(x for s in sets for x in ("--set", s))])
    return rc, capsys.readouterr().out.splitlines()


def rows(lines: list[str], status: str, check: str) -> list[str]:
    return [line for line in lines if line.startswith(status) and line.split(None, 1)[1].startswith(check)]


def blockers(lines: list[str], check: str) -> list[str]:
    return rows(lines, "blocker", check)


def test_clean_config_passes(capsys: pytest.CaptureFixture, data_root: Path, tmp_path: Path) -> None:
    rc, lines = doctor(capsys, PLANETS, f"data.root={data_root}", f"logging.run_dir={tmp_path}", "train.device=cpu")
    assert rc == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("blocker")]
    assert any(line.startswith("ok") and "sha256 verified" in line for line in lines)
    assert lines[-1] == "doctor: 0 blocker(s), 0 warning(s)"


@pytest.mark.slow  # a fresh interpreter importing torch: ~30 s on the shared CI cores
def test_missing_dataset_exits_2_from_the_entrypoint(data_root: Path, tmp_path: Path) -> None:
    proc = run_cli([str(BIN / "astrobio-train"), "doctor", "-c", str(PLANETS), "--set", f"data.root={data_root}",
                    "--set", f"logging.run_dir={tmp_path}", "--set", "data.dataset=no-such-dataset@latest"],
                   timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]  # the init container's verdict: the trainer never starts
    (line,) = blockers(proc.stdout.splitlines(), "dataset")
    assert "'no-such-dataset' not found" in line and "fix: astrobio-data run no-such-dataset" in line


def test_corrupted_shard(capsys: pytest.CaptureFixture, data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    shard = next(p for p in sorted(root.rglob("*.parquet")))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the checksum can tell
    shard.write_bytes(bytes(data))
    rc, lines = doctor(capsys, PLANETS, f"data.root={root}", f"logging.run_dir={tmp_path / 'runs'}")
    assert rc == 2
    (line,) = blockers(lines, "dataset")
    assert "fails its checksum" in line and "fix: astrobio-data run exoplanet-catalogue" in line


def test_unwritable_storage_root(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permission bits: put the root below a regular file instead
        (tmp_path / "a-file").write_text("not a folder")
        root = tmp_path / "a-file" / "store"
    else:
        root = tmp_path / "readonly"
        root.mkdir()
        root.chmod(0o555)
    rc, lines = doctor(capsys, PLANETS, f"data.root={root}", f"logging.run_dir={tmp_path / 'runs'}")
    assert rc == 2
    (line,) = blockers(lines, "storage")
    assert f"{root} is not writable" in line and "fix: fix the permissions" in line


def test_model_that_does_not_fit_the_gpu(capsys: pytest.CaptureFixture, data_root: Path, tmp_path: Path) -> None:
    llm, sets = REPO / "configs" / "llm-125m.yaml", (f"data.root={data_root}", f"logging.run_dir={tmp_path}")
    rc, lines = doctor(capsys, llm, *sets, "train.device=auto", extra=("--gpu-mem", "1GiB"))
    assert rc == 2
    (line,) = blockers(lines, "memory")
    assert "does not fit 1 GPU(s) of 1.0 GiB" in line and "; fix: " in line
    rc, lines = doctor(capsys, llm, *sets, "train.device=auto", extra=("--gpu-mem", "80GiB"))
    assert not blockers(lines, "memory")  # the same model fits a large GPU: the verdict depends on the memory


def test_busy_metrics_port(capsys: pytest.CaptureFixture, data_root: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, lines = doctor(capsys, PLANETS, f"data.root={data_root}", f"logging.run_dir={tmp_path}",
                           f"logging.metrics_port={port}")
    assert rc == 2
    (line,) = blockers(lines, "metrics port")
    assert f"port {port} already in use" in line and "logging.metrics_port" in line


@pytest.mark.slow  # a fresh interpreter importing torch
def test_bad_gpu_mem_is_one_line() -> None:
    proc = run_cli([str(BIN / "astrobio-train"), "doctor", "-c", str(PLANETS), "--gpu-mem", "lots"], timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--gpu-mem" in proc.stderr


def test_run_folder_lease_live_holder_blocks_a_dead_one_warns(capsys: pytest.CaptureFixture, monkeypatch,
                                                                data_root: Path, tmp_path: Path) -> None:
    """A real lease held by a real process of the same pod (the trainer container beside the init container)."""
    run = tmp_path / "runs" / "planets"
    run.mkdir(parents=True)
    monkeypatch.setenv("POD_NAME", "trainer-0")
    sets = (f"data.root={data_root}", f"logging.run_dir={tmp_path / 'runs'}", "train.device=cpu")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(run), "60"], stdout=subprocess.PIPE,
                              text=True, env=cli_env(POD_NAME="trainer-0", PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline() == "held\n"
        rc, lines = doctor(capsys, PLANETS, *sets)
        assert rc == 2
        (line,) = blockers(lines, "run folder")
        assert f"pid {holder.pid} on host {socket.gethostname()} (pod trainer-0) since 20" in line
        assert "heartbeat" in line and "fix: wait for that run to end or stop it (pod trainer-0)" in line
    finally:
        holder.kill()
        holder.wait()
    rc, lines = doctor(capsys, PLANETS, *sets)  # its process is gone, the lease file stays
    assert rc == 0 and not blockers(lines, "run folder")
    (line,) = rows(lines, "warning", "run folder")
    assert f"dead lease of pid {holder.pid}" in line and "no longer exists on this host" in line
    assert "the run will take it over" in line


def test_run_folder_lease_of_a_frozen_holder_elsewhere_ages(capsys: pytest.CaptureFixture, data_root: Path,
                                                           tmp_path: Path) -> None:
    """A holder on another pod is judged by its heartbeat only: live while it beats, dead once it stops."""
    run = tmp_path / "runs" / "planets"
    run.mkdir(parents=True)
    sets = (f"data.root={data_root}", f"logging.run_dir={tmp_path / 'runs'}", "train.device=cpu",
            "checkpoint.lease_timeout_seconds=2")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(run), "2"], stdout=subprocess.PIPE,
                              text=True, env=cli_env(POD_NAME="trainer-on-another-node", PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline() == "held\n"
        rc, lines = doctor(capsys, PLANETS, *sets)
        assert rc == 2 and "(pod trainer-on-another-node)" in blockers(lines, "run folder")[0]
        os.kill(holder.pid, signal.SIGSTOP)  # a frozen or lost node: the process exists, its heartbeat stops
        time.sleep(0.6)  # a heartbeat being written as it stopped lands first
        last_beat = read_holder(run / LEASE_FILE).heartbeat
        time.sleep(max(0.0, last_beat + 2.5 - time.time()))  # past the 2 s timeout
        rc, lines = doctor(capsys, PLANETS, *sets)
        assert rc == 0
        (line,) = rows(lines, "warning", "run folder")
        assert "older than checkpoint.lease_timeout_seconds=2" in line and "the run will take it over" in line
    finally:
        holder.kill()
        holder.wait()
