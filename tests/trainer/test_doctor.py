"""`astrobio-train doctor` as a subprocess: each broken precondition is a blocker row naming its fix, exit 2."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from tests.conftest import BIN, REPO, run_cli

PLANETS = REPO / "configs" / "planets.yaml"


def doctor(config: Path, *sets: str, extra: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    args = [str(BIN / "astrobio-train"), "doctor", "-c", str(config), *extra, *(x for s in sets for x in ("--set", s))]
    proc = run_cli(args, timeout=180)
    assert proc.returncode in (0, 2), proc.stderr[-3000:]
    return proc.returncode, proc.stdout.splitlines()


def blockers(lines: list[str], check: str) -> list[str]:
    return [line for line in lines if line.startswith("blocker") and line.split(None, 1)[1].startswith(check)]


def test_clean_config_passes(data_root: Path, tmp_path: Path) -> None:
    rc, lines = doctor(PLANETS, f"data.root={data_root}", f"logging.run_dir={tmp_path}", "train.device=cpu")
    assert rc == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith("blocker")]
    assert any(line.startswith("ok") and "sha256 verified" in line for line in lines)
    assert lines[-1] == "doctor: 0 blocker(s), 0 warning(s)"


def test_missing_dataset(data_root: Path, tmp_path: Path) -> None:
    rc, lines = doctor(PLANETS, f"data.root={data_root}", f"logging.run_dir={tmp_path}",
                       "data.dataset=no-such-dataset@latest")
    assert rc == 2
    (line,) = blockers(lines, "dataset")
    assert "'no-such-dataset' not found" in line and "fix: astrobio-data run no-such-dataset" in line


def test_corrupted_shard(data_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    shard = next(p for p in sorted(root.rglob("*.parquet")))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: only the checksum can tell
    shard.write_bytes(bytes(data))
    rc, lines = doctor(PLANETS, f"data.root={root}", f"logging.run_dir={tmp_path / 'runs'}")
    assert rc == 2
    (line,) = blockers(lines, "dataset")
    assert "fails its checksum" in line and "fix: astrobio-data run exoplanet-catalogue" in line


def test_unwritable_storage_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through permission bits: put the root below a regular file instead
        (tmp_path / "a-file").write_text("not a folder")
        root = tmp_path / "a-file" / "store"
    else:
        root = tmp_path / "readonly"
        root.mkdir()
        root.chmod(0o555)
    rc, lines = doctor(PLANETS, f"data.root={root}", f"logging.run_dir={tmp_path / 'runs'}")
    assert rc == 2
    (line,) = blockers(lines, "storage")
    assert f"{root} is not writable" in line and "fix: fix the permissions" in line


def test_model_that_does_not_fit_the_gpu(data_root: Path, tmp_path: Path) -> None:
    rc, lines = doctor(REPO / "configs" / "llm-125m.yaml", f"data.root={data_root}", f"logging.run_dir={tmp_path}",
                       "train.device=auto", extra=("--gpu-mem", "1GiB"))
    assert rc == 2
    (line,) = blockers(lines, "memory")
    assert "does not fit 1 GPU(s) of 1.0 GiB" in line and "; fix: " in line
    rc, lines = doctor(REPO / "configs" / "llm-125m.yaml", f"data.root={data_root}", f"logging.run_dir={tmp_path}",
                       "train.device=auto", extra=("--gpu-mem", "80GiB"))
    assert not blockers(lines, "memory")  # the same model fits a large GPU: the verdict depends on the memory


def test_busy_metrics_port(data_root: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        rc, lines = doctor(PLANETS, f"data.root={data_root}", f"logging.run_dir={tmp_path}",
                           f"logging.metrics_port={port}")
    assert rc == 2
    (line,) = blockers(lines, "metrics port")
    assert f"port {port} already in use" in line and "logging.metrics_port" in line


def test_bad_gpu_mem_is_one_line() -> None:
    proc = run_cli([str(BIN / "astrobio-train"), "doctor", "-c", str(PLANETS), "--gpu-mem", "lots"], timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--gpu-mem" in proc.stderr
