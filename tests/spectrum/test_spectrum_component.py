"""Component `spectrum` on the shared loop: a tiny run on spectra made by the real data job; report, resume,
predict on the real WASP-39b spectrum."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch
import yaml
from safetensors.torch import load_file

from datajobs.forward_model import SNAPSHOT
from datajobs.store import Store
from tests.conftest import BIN, REPO, run_cli, train_losses
from trainer.components import get
from trainer.config import load_config

TINY = ("model.channels=8", "model.context=16", "model.hidden=32", "model.flow_layers=4", "model.min_rows=100",
        "model.posterior_samples=200", "model.report_spectra=60", "data.batch_size=64", "schedule.name=constant",
        "schedule.warmup_steps=0", "train.eval_every=20", "checkpoint.every_steps=20", "train.log_every=20")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spectra")
    cfg = root / "sim.yaml"
    cfg.write_text(yaml.safe_dump({"spectra-sim": {"n_spectra": 400, "chunk_size": 100, "batch_size": 50,
                                                   "n_layers": 16, "workers": 2, "seed": 1}}))
    proc = run_cli([str(BIN / "astrobio-data"), "run", "spectra-sim", "--root", str(root / "data"),
                    "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr
    return root / "data"


def train(sim_root: Path, run_dir: Path, *extra: str):
    sets = [f"data.root={sim_root}", f"logging.run_dir={run_dir}", *TINY, *extra]
    return run_cli([str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "spectrum.yaml"),
                    *(x for s in sets for x in ("--set", s))])


@pytest.fixture(scope="module")
def trained(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs")
    proc = train(sim_root, run_dir, "train.max_steps=80")
    assert proc.returncode == 0, proc.stderr
    return run_dir / "spectrum"


def test_run_reports_r2_and_coverage(trained: Path) -> None:
    report = (trained / "report.md").read_text()
    assert "Held-out retrieval" in report and "95% coverage" in report
    for p in ("temperature", "log_h2o", "log_co2", "radius"):
        assert f"| {p} |" in report
    assert len(train_losses(trained)) == 80
    losses = train_losses(trained)
    assert np.mean([losses[s] for s in range(71, 81)]) < np.mean([losses[s] for s in range(1, 11)])


@pytest.mark.slow
def test_resume_continues_exactly(sim_root: Path, trained: Path, tmp_path: Path) -> None:
    first = train(sim_root, tmp_path, "train.max_steps=40")
    assert first.returncode == 0, first.stderr
    second = train(sim_root, tmp_path, "train.max_steps=80")
    assert second.returncode == 0, second.stderr
    assert "resumed from step" in second.stderr
    got, expected = train_losses(tmp_path / "spectrum"), train_losses(trained)
    assert sorted(got) == sorted(expected)
    assert [s for s in expected if got[s] != expected[s]] == []


def test_predict_file_on_wasp39b(sim_root: Path, trained: Path, tmp_path: Path) -> None:
    cfg = load_config(trained / "config.yaml")
    component = get("spectrum")(cfg)
    component.build_data(Store(str(sim_root)))
    model = component.build_model(None)
    model.load_state_dict(load_file(str(trained / "best" / "model.safetensors")))
    out = tmp_path / "wasp39b.csv"
    line = component.predict_file(model, str(SNAPSHOT / "wasp39b_jwst_prism_g395h.csv"), str(out),
                                  torch.device("cpu"), {"mask_um": "3.9-4.2", "samples": 300})
    used = int(line.split(" from ")[1].split(" of ")[0])
    assert 100 < used < 171  # PRISM + G395H points minus the masked SO2 range
    table = pacsv.read_csv(out).to_pydict()
    assert table["parameter"] == component.parameters
    for lo, q2, q97, hi in zip(table["prior_low"], table["q02.5"], table["q97.5"], table["prior_high"], strict=True):
        assert lo <= q2 <= q97 <= hi
    with np.load(out.with_suffix(".samples.npz"), allow_pickle=False) as z:
        assert z["samples"].shape == (300, 7)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["mask_um"] == [[3.9, 4.2]]
