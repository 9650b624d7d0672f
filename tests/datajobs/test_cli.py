"""`astrobio-data` as a subprocess: list/show/verify, and one-line exit-2 errors for broken or missing data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datajobs.store import Store
from tests.conftest import REPO
from tests.datajobs.helpers import FIXTURES, cli, error_line


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("cli") / "data")
    proc = cli("run", "nasa-exoplanets", "--from-snapshot", "--root", root)
    assert proc.returncode == 0, proc.stderr
    assert "published" in proc.stdout
    assert all(json.loads(line)["logger"].startswith("astrobio") for line in proc.stderr.splitlines())  # JSON logs
    return root


def copy_root(src: str, dst: Path) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_list_show_verify(published):
    version = Store(published).latest("nasa-exoplanets")
    listed = cli("list", "--root", published)
    assert listed.returncode == 0 and f"nasa-exoplanets@{version}  (latest)" in listed.stdout
    shown = cli("show", "nasa-exoplanets@latest", "--root", published)
    assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == version
    card = cli("show", "nasa-exoplanets@latest", "--card", "--root", published)
    assert card.stdout.startswith("# nasa-exoplanets")
    verified = cli("verify", f"nasa-exoplanets@{version}", "--root", published)
    assert verified.returncode == 0 and "shards verified" in verified.stdout


def test_checksum_mismatch_is_one_line_exit_2(published, tmp_path):
    root = copy_root(published, tmp_path / "data")
    version = Store(root).open("nasa-exoplanets@latest")
    shard = Path(root) / "datasets" / "nasa-exoplanets" / version.version / "planets.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = cli("verify", "nasa-exoplanets@latest", "--root", root)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "planets.parquet fails its checksum" in line and "astrobio-data run nasa-exoplanets --from-snapshot" in line


def test_truncated_shard_is_one_line_exit_2(published, tmp_path):
    root = copy_root(published, tmp_path / "data")
    version = Store(root).latest("nasa-exoplanets")
    shard = Path(root) / "datasets" / "nasa-exoplanets" / version / "planets.parquet"
    shard.write_bytes(shard.read_bytes()[:1000])
    proc = cli("verify", "nasa-exoplanets@latest", "--root", root)
    assert proc.returncode == 2 and "truncated" in error_line(proc)


def test_missing_manifest_is_one_line_exit_2(published, tmp_path):
    root = copy_root(published, tmp_path / "data")
    version = Store(root).latest("nasa-exoplanets")
    (Path(root) / "datasets" / "nasa-exoplanets" / version / "manifest.json").unlink()
    proc = cli("show", f"nasa-exoplanets@{version}", "--root", root)
    assert proc.returncode == 2 and "manifest.json is missing" in error_line(proc)


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    proc = cli("verify", "exoplanet-catalogue@latest", "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "create it with `astrobio-data run exoplanet-catalogue`" in error_line(proc)


def test_bad_config_key_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("nasa-exoplanets:\n  tabel: ps\n")
    proc = cli("run", "nasa-exoplanets", "--config", str(cfg), "--root", str(tmp_path))
    assert proc.returncode == 2 and "nasa-exoplanets.tabel: Extra inputs are not permitted" in error_line(proc)


def test_upstream_down_is_exit_1(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "nasa-exoplanets:\n  tap_url: http://127.0.0.1:9/TAP/sync\n"
        "  http: {max_attempts: 2, backoff_initial_s: 0.01, timeout_s: 1}\n"
    )
    proc = cli("run", "nasa-exoplanets", "--config", str(cfg), "--root", str(tmp_path))
    assert proc.returncode == 1 and "failed after 2 attempts" in error_line(proc)


def test_datajobs_never_import_torch():
    code = (
        "import sys, importlib; from datajobs import sources; import datajobs.cli, datajobs.tokens\n"
        "[sources.get(n) for n in sources.SOURCES]\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_kill_9_at_any_point_leaves_latest_readable(tmp_path):
    """kill -9 `run` at spread-out moments of its run time: LATEST and every listed version stay whole."""
    root = str(tmp_path / "data")
    fixture = str(FIXTURES / "nasa_tap" / "pscomppars_sync.csv")
    assert cli("run", "nasa-exoplanets", "--from-file", fixture, "--root", root).returncode == 0
    started = time.monotonic()
    full = cli("run", "nasa-exoplanets", "--from-snapshot", "--root", str(tmp_path / "timing"))
    duration = time.monotonic() - started
    assert full.returncode == 0
    for fraction in (0.3, 0.6, 0.8, 0.9, 0.95, 0.98):
        proc = subprocess.Popen(
            [sys.executable, "-m", "datajobs.cli", "run", "nasa-exoplanets", "--from-snapshot", "--root", root],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        store = Store(root)
        latest = store.open("nasa-exoplanets@latest")
        assert latest.verify() == []
        assert latest.version in store.versions("nasa-exoplanets")
        for version in store.versions("nasa-exoplanets"):  # every listed version is complete
            assert store.open(f"nasa-exoplanets@{version}").verify() == []
