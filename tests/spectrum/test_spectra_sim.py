"""spectra-sim data job: real forward-model runs through the CLI; kill + rerun, quarantine, determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import yaml

from datajobs.store import Store
from tests.conftest import REPO, wait_for
from tests.datajobs.helpers import cli

SMALL = {"n_spectra": 120, "chunk_size": 20, "batch_size": 20, "n_layers": 16, "workers": 1, "seed": 3}


def config(tmp_path, **over) -> str:
    path = tmp_path / f"sim-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump({"spectra-sim": {**SMALL, **over}}))
    return str(path)


def arrays(root, name: str = "spectra-sim") -> dict[str, np.ndarray]:
    version = Store(str(root)).open(f"{name}@latest")
    out: dict[str, list[np.ndarray]] = {}
    for shard in version.shards("npz"):
        if shard.startswith("spectra-"):
            import io

            with np.load(io.BytesIO(version.read_bytes(shard)), allow_pickle=False) as z:
                for k in z.files:
                    out.setdefault(k, []).append(z[k])
    return {k: np.concatenate(v) for k, v in out.items()}


def test_killed_job_resumes_and_matches_an_uninterrupted_run(tmp_path) -> None:
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    cfg = config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "datajobs.cli", "run", "spectra-sim", "--root", str(killed_root),
                             "--config", cfg], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    work = killed_root / ".work" / "spectra-sim"
    wait_for(lambda: len(list(work.glob("*/chunk-*.npz"))) >= 2, 120, "two chunks on disk", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(work.glob("*/chunk-*.npz")))
    assert done_before < 6, "the job finished before it was killed; make it bigger"
    assert Store(str(killed_root)).latest("spectra-sim") is None  # nothing half-published
    rerun = cli("run", "spectra-sim", "--root", str(killed_root), "--config", cfg, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f'"reused": {done_before}' in rerun.stderr
    # a different worker count, from scratch, gives the same spectra
    fresh = cli("run", "spectra-sim", "--root", str(clean_root), "--config", config(tmp_path, workers=2), env=env,
                timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    a, b = arrays(killed_root), arrays(clean_root)
    assert a["params"].shape == (120, 7)
    for key in ("params", "depth", "depth_true", "mask", "error"):
        np.testing.assert_array_equal(a[key], b[key])
    # masks select one mode set per spectrum; noise is at the real error-bar level
    version = Store(str(killed_root)).open("spectra-sim@latest")
    assert version.manifest["source"]["kind"] == "simulation"
    resid = (a["depth"] - a["depth_true"])[a["mask"]] / a["error"][a["mask"]]
    assert 0.8 < resid.std() < 1.2
    assert set(a["mask"].sum(axis=1)) == {112, 59, 171}  # PRISM, G395H, both


def test_non_finite_spectra_are_quarantined(tmp_path) -> None:
    root = tmp_path / "data"
    # abundances up to 100% each: where H2O + CO2 >= 1 no fill gas is left and the model returns NaN
    cfg = config(tmp_path, n_spectra=40, chunk_size=40, priors={"log_h2o": [-1.0, 0.0], "log_co2": [-1.0, 0.0]},
                 max_invalid_share=0.9)
    proc = cli("run", "spectra-sim", "--root", str(root), "--config", cfg, timeout=300)
    assert proc.returncode == 0, proc.stderr
    version = Store(str(root)).open("spectra-sim@latest")
    quarantined = version.manifest["quarantine"]["rows"]
    assert 0 < quarantined < 40
    kept = arrays(root)
    assert len(kept["params"]) == 40 - quarantined
    assert np.isfinite(kept["depth_true"]).all()
    assert (10 ** kept["params"][:, 1] + 10 ** kept["params"][:, 2] < 1).all()
    strict = cli("run", "spectra-sim", "--root", str(tmp_path / "strict"), "--config",
                 config(tmp_path, n_spectra=40, chunk_size=40, priors={"log_h2o": [-1.0, 0.0], "log_co2": [-1.0, 0.0]}),
                 timeout=300)
    assert strict.returncode == 2 and "not finite" in strict.stderr


def test_spectra_grid_imports_a_labelled_csv_and_npy(tmp_path) -> None:
    """The MultiREx H2O series (a real TauREx grid) as someone else's labelled set."""
    src = REPO / "datajobs" / "snapshots" / "spectra" / "multirex_reference" / "H2O_data.csv"
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump({"spectra-grid": {"labels": ["atm temperature", "atm H2O"], "error": 1e-5}}))
    proc = cli("run", "spectra-grid", "--from-file", str(src), "--root", str(tmp_path / "data"), "--config", str(cfg),
               timeout=300)
    assert proc.returncode == 0, proc.stderr
    version = Store(str(tmp_path / "data")).open("spectra-grid@latest")
    got = arrays(tmp_path / "data", "spectra-grid")
    assert got["params"].shape == (30, 2) and got["depth"].shape == (30, 385)
    assert version.read_json("simulation.json")["priors"]["atm H2O"] == [-10.0, -1.0]
    # the same set as an npy matrix; a missing error setting is one line, exit 2
    m = np.full((31, 2 + 385), np.nan)
    m[0, 2:] = np.linspace(0.7, 5.3, 385)
    m[1:, :2], m[1:, 2:] = got["params"], got["depth"]
    np.save(tmp_path / "grid.npy", m)
    again = cli("run", "spectra-grid", "--from-file", str(tmp_path / "grid.npy"), "--root", str(tmp_path / "d2"),
                "--config", str(cfg), timeout=300)
    assert again.returncode == 0, again.stderr
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"spectra-grid": {"labels": ["a", "b"]}}))
    no_err = cli("run", "spectra-grid", "--from-file", str(tmp_path / "grid.npy"), "--root", str(tmp_path / "d3"),
                 "--config", str(bare), timeout=300)
    assert no_err.returncode == 2 and "set spectra-grid.error" in no_err.stderr


def test_a_mode_set_outside_modes_stops_before_any_spectrum_is_made(tmp_path) -> None:
    proc = cli("run", "spectra-sim", "--root", str(tmp_path / "data"),
               "--config", config(tmp_path, modes=["prism"], mode_sets=[["prism"], ["g395h"]]))
    assert proc.returncode == 2, proc.stderr
    assert "mode set ['g395h'] is empty or names a mode not in modes ['prism']" in proc.stderr
    assert not (tmp_path / "data" / "datasets").exists()
