"""The planets mass model's pieces that need no training: the mixture quantiles and the interval recalibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.models.mass_model import CentralIntervalCalibration, mixture_cdf, mixture_quantiles


def test_mixture_quantiles_invert_the_mixture_cdf() -> None:
    mu = torch.tensor([[0.0, 1.0], [2.0, 2.5]], dtype=torch.float64)
    sigma = torch.tensor([[0.3, 0.5], [0.2, 0.2]], dtype=torch.float64)
    q = mixture_quantiles(mu, sigma, [0.025, 0.5, 0.84])
    for j, level in enumerate((0.025, 0.5, 0.84)):
        assert torch.allclose(mixture_cdf(q[:, j], mu, sigma), torch.full((2,), level, dtype=torch.float64),
                              atol=1e-9)


def test_recalibration_holds_the_nominal_share_of_its_rows() -> None:
    # Too-wide intervals: the rows sit at central levels concentrated near 0 (PIT near 0.5).
    pit = 0.5 + 0.5 * np.linspace(-1, 1, 401) ** 3
    calibration = CentralIntervalCalibration.from_pit(pit)
    levels = 2 * np.abs(pit - 0.5)
    for coverage in (0.5, 0.68, 0.95):
        level = calibration.mixture_level(coverage)
        assert level < coverage  # narrower than the nominal interval
        assert np.mean(levels <= level) == pytest.approx(coverage, abs=0.01)
        assert calibration.calibrated_level(np.array([level]))[0] == pytest.approx(coverage, abs=1e-9)


def test_calibrated_pit_of_calibrated_rows_is_close_to_identity() -> None:
    uniform = np.random.default_rng(0).uniform(size=2000)
    calibration = CentralIntervalCalibration.from_pit(uniform)
    for coverage in (0.68, 0.95):
        assert calibration.mixture_level(coverage) == pytest.approx(coverage, abs=0.03)


def test_recalibration_refuses_no_rows_and_non_finite_levels() -> None:
    with pytest.raises(ValueError, match="at least one validation row"):
        CentralIntervalCalibration(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        CentralIntervalCalibration(np.array([0.2, np.nan]))
