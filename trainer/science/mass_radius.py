"""Chen & Kipping (2017, ApJ 834, 17) "Forecaster" mass-radius relation, from the paper's Table 1.

The relation is a broken power law in log space, R = C M^S (M in Earth masses, R in Earth radii), with
intrinsic scatter per class. Radius -> mass is not a function (the Jovian slope is slightly negative), so
mass is inferred as Forecaster does: the posterior median of log M given the observed log R, under the
relation's scatter and a prior uniform in log M over the range the paper fits (from 1e-4 Earth masses, its
smallest dwarf planets and moons, up to 0.08 M_sun), with the paper's mean hyper-parameters.
"""

from __future__ import annotations

import numpy as np

# Table 1 (mean values): terran, neptunian, jovian, stellar.
LOG_C_TERRAN = 0.00346
SLOPES = np.array([0.2790, 0.589, -0.044, 0.881])
SCATTER_DEX = np.array([0.0403, 0.146, 0.0737, 0.0447])  # intrinsic scatter of log10 R
TRANSITIONS_MEARTH = np.array([2.04, 0.414 * 317.828, 0.0800 * 332_946.0])  # 2.04 M_E, 0.414 M_J, 0.08 M_sun
LOG_TRANSITIONS = np.log10(TRANSITIONS_MEARTH)


def _log_c() -> np.ndarray:
    """Intercepts of each segment, fixed by continuity at the transitions."""
    c = [LOG_C_TERRAN]
    for i, t in enumerate(LOG_TRANSITIONS):
        c.append(c[-1] + (SLOPES[i] - SLOPES[i + 1]) * t)
    return np.array(c)


def log_radius(log_mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean log10 R and its scatter for log10 M (Earth units)."""
    segment = np.searchsorted(LOG_TRANSITIONS, log_mass, side="right")
    return _log_c()[segment] + SLOPES[segment] * log_mass, SCATTER_DEX[segment]


def log_mass_quantiles(radius_earth: np.ndarray, quantiles: tuple[float, ...],
                       log_mass_range: tuple[float, float] | None = None, grid: int = 4000) -> np.ndarray:
    """Posterior quantiles of log10 M (Earth masses) for each radius (Earth radii): shape (len(radius), len(q))."""
    low, high = log_mass_range or (-4.0, float(LOG_TRANSITIONS[2]))
    log_m = np.linspace(low, high, grid)
    mean, sigma = log_radius(log_m)
    log_r = np.log10(np.asarray(radius_earth, dtype=np.float64))[:, None]
    weights = np.exp(-0.5 * ((log_r - mean[None, :]) / sigma[None, :]) ** 2) / sigma[None, :]
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    return np.stack([log_m[np.argmax(cdf >= q, axis=1)] for q in quantiles], axis=1)


def log_mass_from_radius(radius_earth: np.ndarray, log_mass_range: tuple[float, float] | None = None,
                         grid: int = 4000) -> np.ndarray:
    """Posterior-median log10 M (Earth masses) for each radius (Earth radii)."""
    return log_mass_quantiles(radius_earth, (0.5,), log_mass_range, grid)[:, 0]


def log_mass_posterior(radius_earth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior median of log10 M and a Gaussian-equivalent spread (half the 16-84% range), in dex."""
    q = log_mass_quantiles(radius_earth, (0.16, 0.5, 0.84))
    return q[:, 1], np.maximum((q[:, 2] - q[:, 0]) / 2, 1e-3)
