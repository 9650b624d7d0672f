"""datacube through the CLI on the bundled ExoPlaSim runs: exact resume after kill -9, predict writes a cube."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BIN, REPO, checkpoint_steps, cli_env, run_cli, train_losses, wait_for

TINY = ("model.dim=16", "model.depth=1", "model.heads=2", "model.stem=4", "model.learning_curve_steps=0",
        "model.ebm_baseline=false", "model.kinds=[sweep,example]", "model.min_runs=3", "model.gp_components=2",
        "train.max_steps=40", "train.eval_every=40", "checkpoint.every_steps=10", "checkpoint.keep_last=10",
        "train.log_every=10")


@pytest.fixture(scope="module")
def cube_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    subprocess.run([BIN / "astrobio-data", "run", "exoplasim-sweep", "--from-snapshot", "--root", str(root)],
                   check=True, capture_output=True, env=cli_env())
    return root


def args(root: Path, run_dir: Path, *extra: str) -> list[str]:
    sets = [x for s in (f"data.root={root}", f"logging.run_dir={run_dir}", *TINY, *extra) for x in ("--set", s)]
    return [str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "datacube.yaml"), *sets]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # three tiny training runs and a predict: ~1 min on 2 idle cores
def test_kill_9_resume_is_exact_and_predict_writes_a_cube(cube_root: Path, tmp_path: Path) -> None:
    reference = run_cli(args(cube_root, tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_ref = tmp_path / "ref" / "datacube"
    expected = train_losses(run_ref)
    assert len(expected) == 40
    report = (run_ref / "report.md").read_text()
    for row in ("CNN-ViT (this model)", "nearest neighbour (parameters)", "ridge regression (parameters)",
                "+ GP regression", "energy imbalance"):
        assert row in report
    assert (run_ref / "maps.png").stat().st_size > 1000

    run = tmp_path / "killed" / "datacube"
    proc = subprocess.Popen(args(cube_root, tmp_path / "killed"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env())
    wait_for(lambda: 20 in checkpoint_steps(run), 300, "the step-20 checkpoint", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert max(train_losses(run)) < 40, "the run finished before it was killed"
    resumed = run_cli(args(cube_root, tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    got = train_losses(run)
    assert [s for s in expected if got[s] != expected[s]] == []

    import xarray as xr

    planets = tmp_path / "planets.csv"
    planets.write_text("flux,star,synchronous,rotation_period,pressure,pco2,gravity,radius,aquaplanet\n"
                       "1200,sun,false,1.0,1.0,0.0004,9.81,1.0,false\n"
                       "900,trap,true,6.1,1.0,0.0004,9.1,0.92,true\n")
    cube = tmp_path / "cube.nc"
    out = run_cli([str(BIN / "astrobio-train"), "predict", "-m", str(run_ref), "--input", str(planets),
                   "--output", str(cube)])
    assert out.returncode == 0, out.stderr[-3000:]
    with xr.open_dataset(cube) as ds:
        assert ds.sizes == {"planet": 2, "lev": 10, "lat": 32, "lon": 64}
        np.testing.assert_allclose(ds["lon"].values, np.arange(64) * 5.625, atol=1e-3)
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["ts"].attrs["units"] == "K"
        assert ds["ta"].dims == ("planet", "lev", "lat", "lon")
        assert list(ds["star"].values) == ["sun", "trap"] and ds["flux"].attrs["units"] == "W m-2"
        assert np.isfinite(ds["ts"].values).all() and 100 < float(ds["ts"].mean()) < 400

    bad = tmp_path / "bad.csv"
    bad.write_text(planets.read_text().replace("1200,", "-5,"))
    refused = run_cli([str(BIN / "astrobio-train"), "predict", "-m", str(run_ref), "--input", str(bad),
                       "--output", str(tmp_path / "bad.nc")])
    assert refused.returncode == 2 and "flux" in refused.stderr and not (tmp_path / "bad.nc").exists()
