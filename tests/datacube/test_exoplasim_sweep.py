"""exoplasim-sweep against the real ExoPlaSim GCM: parameters recorded, cache hits, kills lose nothing finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from datajobs.sources.exoplasim_sweep import Config, design, nearest_finished, run_id, settings_of
from datajobs.store import Store
from tests.conftest import REPO, require_tool

TINY = {"spinup_days": 2, "cold_spinup_days": 2, "keep_months": 1, "month_days": 2, "mixed_layer_m": 1.0}


def _config(tmp: Path, runs: int) -> Path:
    path = tmp / f"sweep-{runs}.yaml"
    path.write_text(yaml.safe_dump({"exoplasim-sweep": {**TINY, "runs": runs, "cache_dir": str(tmp / "cache")}}))
    return path


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datajobs.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)


def _finished(cache: Path) -> dict[str, bytes]:
    return {d.name: (d / "fields.npz").read_bytes() for d in cache.iterdir()
            if d.is_dir() and (d / "meta.json").exists()}


def _points_into(link: Path, folder: Path) -> bool:
    try:
        return str(link.readlink()).startswith(str(folder))
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four tiny GCM runs: ~2 min on 2 idle cores, far longer on a shared machine
def test_real_sweep_records_caches_and_survives_a_kill(tmp_path):
    require_tool("gfortran")
    root = str(tmp_path / "data")
    cache = tmp_path / "cache"
    proc = _cli("run", "exoplasim-sweep", "--config", str(_config(tmp_path, 2)), "--root", root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = Store(root).open("exoplasim-sweep@latest")
    manifest = version.manifest
    cfg = Config(**TINY, runs=2, cache_dir=cache)
    expected = design(cfg)
    assert manifest["run_count"] == 2
    assert [r["params"] | {"star_wien_teff": None} for r in manifest["runs"]] == [
        p | {"star_wien_teff": None} for p in expected]
    assert manifest["source"]["model"] == "exoplasim==3.4.2"
    assert manifest["source"]["settings"] == settings_of(cfg)
    assert [r["id"] for r in manifest["runs"]] == [run_id(p, settings_of(cfg)) for p in expected]
    table = version.read_table("runs.parquet")
    assert table.column("flux").to_pylist() == [p["flux"] for p in expected]
    grid = version.read_json("grid.json")
    assert len(grid["lat"]) == 32 and len(grid["lon"]) == 64 and len(grid["lev"]) == 10
    with np.load(__import__("io").BytesIO(version.read_bytes(f"runs/{manifest['runs'][0]['id']}.npz"))) as z:
        assert z["ts"].shape == (1, 32, 64) and z["ta"].shape == (1, 10, 32, 64)
        assert 150 < float(z["ts"].mean()) < 350
    show = _cli("show", "exoplasim-sweep@latest", "--root", root)
    assert show.stdout.strip().splitlines()[-1] == "2 runs"

    # a rerun hits the cache: nothing simulated, identical content -> no new version
    before = _finished(cache)
    again = _cli("run", "exoplasim-sweep", "--config", str(_config(tmp_path, 2)), "--root", root)
    assert again.returncode == 0 and ": unchanged" in again.stdout, again.stderr[-2000:]
    assert '"cached": 2' in again.stderr and '"to_run": 0' in again.stderr
    assert _finished(cache) == before

    # a sweep killed during its third run keeps the two finished runs byte for byte, then completes
    bigger = subprocess.Popen([sys.executable, "-m", "datajobs.cli", "run", "exoplasim-sweep", "--config",
                               str(_config(tmp_path, 3)), "--root", root], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cache.glob(".partial-*/model/*.cfg")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(cache.glob(".partial-*")), "the third run never started"
    bigger.send_signal(signal.SIGTERM)
    assert bigger.wait(timeout=60) == 143
    time.sleep(1)
    assert not [p for p in Path("/proc").glob("[0-9]*/cwd") if _points_into(p, cache)], "a model process survived"
    assert _finished(cache) == before
    resumed = _cli("run", "exoplasim-sweep", "--config", str(_config(tmp_path, 3)), "--root", root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert '"cached": 2' in resumed.stderr and '"to_run": 1' in resumed.stderr
    assert Store(root).open("exoplasim-sweep@latest").manifest["run_count"] == 3
    assert {k: v for k, v in _finished(cache).items() if k in before} == before


def test_missing_gfortran_is_one_line_exit_2(tmp_path):
    proc = _cli("run", "exoplasim-sweep", "--config", str(_config(tmp_path, 1)), "--root", str(tmp_path / "d"),
                env={"PATH": str(tmp_path)})  # a PATH without gfortran
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "gfortran is not on PATH" in errors[0] and "apt-get install gfortran" in errors[0]
    assert not (tmp_path / "cache").exists()


def test_snapshot_publishes_the_bundled_runs(tmp_path):
    root = str(tmp_path / "data")
    proc = _cli("run", "exoplasim-sweep", "--from-snapshot", "--root", root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = Store(root).open("exoplasim-sweep@latest")
    index = json.loads((REPO / "datajobs/snapshots/exoplasim_sweep/runs.json").read_text())
    assert version.manifest["run_count"] == len(index["runs"]) >= 3
    kinds = version.read_table("runs.parquet").column("kind").to_pylist()
    assert kinds.count("example") == 2 and "sweep" in kinds
    assert "exoplasim==3.4.2" in version.manifest["source"]["provenance"]


def test_design_covers_the_space_and_warm_starts_pick_the_nearest_compatible_run():
    cfg = Config(runs=40)
    points = design(cfg)
    assert len(points) == 40 and points == design(cfg)  # deterministic for a seed
    assert {p["star"] for p in points} == {"sun", "gj667", "k2", "trap", "wolf"}
    assert {p["synchronous"] for p in points} == {True, False} and {p["aquaplanet"] for p in points} == {True, False}
    assert all(cfg.flux[0] <= p["flux"] <= cfg.flux[1] and p["pco2"] < p["pressure"] for p in points)
    settings = settings_of(cfg)
    target = points[0]
    near = {**target, "flux": target["flux"] + 1.0}
    far = {**target, "flux": cfg.flux[1] if target["flux"] < 1300 else cfg.flux[0]}
    other_regime = {**near, "synchronous": not target["synchronous"]}
    done = {"near": {"settings": settings, "params": near}, "far": {"settings": settings, "params": far},
            "regime": {"settings": settings, "params": other_regime},
            "settings": {"settings": {**settings, "spinup_days": 1}, "params": target}}
    assert nearest_finished(target, settings, done, cfg) == "near"
    del done["near"]
    assert nearest_finished(target, settings, done, cfg) == "far"
    assert nearest_finished(target, settings, {"regime": done["regime"]}, cfg) is None


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two tiny GCM runs
def test_indexed_shares_are_disjoint_and_publishing_waits_for_all(tmp_path):
    """An Indexed Job of count 2: indexes 0 and 1 each run their own real run into the shared cache; index 2
    publishes only once both shares are done, the whole design, and a rerun of it publishes nothing new."""
    require_tool("gfortran")
    root, cache = str(tmp_path / "data"), tmp_path / "cache"
    config = tmp_path / "indexed.yaml"
    config.write_text(yaml.safe_dump({"exoplasim-sweep": {**TINY, "runs": 2, "count": 2, "cache_dir": str(cache)}}))
    args = ("run", "exoplasim-sweep", "--config", str(config), "--root", root)
    first = _cli(*args, env={"JOB_COMPLETION_INDEX": "0"})
    assert first.returncode == 0, first.stderr[-2000:]
    assert not Store(root).names(), "a share publishes nothing"
    log = tmp_path / "publisher.log"
    with log.open("w") as sink:
        publisher = subprocess.Popen([sys.executable, "-m", "datajobs.cli", *args], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=sink,
                                     env={**os.environ, "JOB_COMPLETION_INDEX": "2"})
    deadline = time.time() + 120
    while '"msg": "start"' not in log.read_text() and publisher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # a few of its 2 s polls of the share records
    assert publisher.poll() is None and not Store(root).names(), "published before share 1 was done"
    second = _cli(*args, env={"JOB_COMPLETION_INDEX": "1"})
    assert second.returncode == 0, second.stderr[-2000:]
    out, _ = publisher.communicate(timeout=120)
    assert publisher.returncode == 0 and ": published" in out, log.read_text()[-2000:]
    cfg = Config(**TINY, runs=2, cache_dir=cache)
    ids = [run_id(p, settings_of(cfg)) for p in design(cfg)]
    shares = [json.loads(p.read_text()) for p in sorted(cache.glob(".shares/*/*.json"))]
    assert [s["finished"] for s in shares] == [[ids[0]], [ids[1]]]  # disjoint, and together the design
    assert '"cached": 0' in first.stderr and '"cached": 0' in second.stderr  # each simulated its own run
    manifest = Store(root).open("exoplasim-sweep@latest").manifest
    assert [r["id"] for r in manifest["runs"]] == ids
    again = _cli(*args, env={"JOB_COMPLETION_INDEX": "2"})
    assert again.returncode == 0 and ": unchanged" in again.stdout, again.stderr[-2000:]


def test_publish_index_waits_for_missing_shares(tmp_path):
    """Without the shares' records the publish index publishes nothing and names the missing shares."""
    config = tmp_path / "indexed.yaml"
    config.write_text(yaml.safe_dump({"exoplasim-sweep": {**TINY, "runs": 2, "count": 2, "index": 2,
                                                          "publish_wait_s": 3, "cache_dir": str(tmp_path / "c")}}))
    proc = _cli("run", "exoplasim-sweep", "--config", str(config), "--root", str(tmp_path / "data"))
    assert proc.returncode == 2 and "shares [0, 1] of 2 not done after publish_wait_s=3" in proc.stderr
    assert not (tmp_path / "data").exists() or not Store(str(tmp_path / "data")).names()
