"""planets v2 through the CLI on the bundled snapshot: issue 9's goals, the anchor far from the data, the card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from datajobs.store import Store
from tests.conftest import planets_args, run_cli
from trainer.bundle import load_bundle
from trainer.science.mass_radius import log_mass_from_radius

pytestmark = pytest.mark.slow  # one full `make train`-sized run (ensemble + 7 re-trained splits) shared by all


@pytest.fixture(scope="module")
def trained(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, float]]:
    runs = tmp_path_factory.mktemp("planets-v2")
    result = run_cli(planets_args(data_root, runs, "model.protocol_evaluation=true"), timeout=600)
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


def test_68_percent_interval_coverage(trained) -> None:
    assert 0.62 <= trained[2]["coverage68_random"] <= 0.74


def test_recalibration_moves_intervals_not_the_median(trained) -> None:
    """The validation-fitted recalibration narrows the too-wide 68% intervals; point predictions are unchanged."""
    m = trained[2]
    assert m["coverage68_random_uncalibrated"] > 0.74 > m["coverage68_random"], m


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


def test_planet_far_from_the_data_returns_to_the_relation_and_is_flagged(trained, data_root: Path) -> None:
    bundle = load_bundle(trained[0])
    # 0.3 Earth radii on a 1,000-day orbit around a Sun-like star: no training planet is anywhere near.
    a = (1000 / 365.25) ** (2 / 3)
    far = {"pl_rade": 0.3, "pl_orbper": 1000.0, "pl_insol": 1 / a**2, "pl_orbsmax": a, "st_teff": 5772.0,
           "st_rad": 1.0, "st_mass": 1.0, "st_met": 0.0}
    out = bundle.predict(pa.table({k: [v] for k, v in far.items()})).to_pylist()[0]
    assert out["in_training_domain"] is False, out
    chen = 10 ** float(log_mass_from_radius(np.array([0.3]))[0])
    assert abs(np.log10(out["pl_bmasse_pred"] / chen)) < 0.02, out
    assert out["pl_bmasse_lo95"] < out["pl_bmasse_lo68"] < out["pl_bmasse_pred"] < out["pl_bmasse_hi68"] \
        < out["pl_bmasse_hi95"]
    assert 0.05 <= out["pl_bmasse_pred"] / 0.3**3 * 5.514 <= 30
    # The network's correction is gated off there, and on for held-out planets.
    component, model = bundle.component, bundle.model
    x = torch.tensor(component.domain_features(pa.table({k: [v] for k, v in far.items()})), dtype=torch.float32)
    assert float(model.gate(x)) < 0.01
    component.build_data(Store(str(data_root)))  # frozen: the bundle's statistics are kept
    held = torch.tensor(component.domain_features(pa.table(component.held_out.inputs)), dtype=torch.float32)
    assert float((model.gate(held) > 0.5).float().mean()) > 0.9


def test_bundle_predictions_reproduce_the_reported_test_rmse(trained, data_root: Path) -> None:
    run, _, m = trained
    bundle = load_bundle(run)
    bundle.component.build_data(Store(str(data_root)))
    held = bundle.component.held_out
    out = bundle.predict(pa.table(held.inputs))
    rmse = float(np.sqrt(np.mean((np.log10(out["pl_bmasse_pred"].to_numpy()) - held.log_mass) ** 2)))
    assert abs(rmse - m["test_rmse_dex"]) < 1e-3
    mass = 10**held.log_mass
    inside68 = (out["pl_bmasse_lo68"].to_numpy() <= mass) & (mass <= out["pl_bmasse_hi68"].to_numpy())
    assert abs(inside68.mean() - m["test_coverage68"]) < 1e-4  # the report rounds to 4 decimals
