"""Gaussian log-likelihood of an observed binned transmission spectrum under the spectra-sim forward model.

One definition serves the nested-sampling baseline and the importance-sampling correction of the network's
posterior, so both judge a parameter vector by the same physics, priors and noise model: the isothermal
`datajobs.forward_model` atmosphere of `datajobs.sources.spectra_sim.simulate`, averaged over each observed bin,
and independent Gaussian errors per bin. The constant -sum(log(sqrt(2 pi) sigma)) is left out (dynesty's
convention), so log-evidences from either method are comparable.
"""

from __future__ import annotations

import numpy as np

from datajobs.forward_model import WASP39B, Planet
from datajobs.sources.spectra_sim import binned_forward_model, simulate


class SpectrumLikelihood:
    """log L(theta) for one spectrum: bins given by centre and half width [um], depths and 1-sigma errors.
    `batch` atmospheres go through the forward model at once (8 was the fastest on a 2-core CPU; the values do
    not depend on it)."""

    def __init__(self, wavelength: np.ndarray, half_width: np.ndarray, depth: np.ndarray, error: np.ndarray, *,
                 planet: Planet = WASP39B, n_layers: int = 50, batch: int = 8) -> None:
        self.forward_model, self.matrix = binned_forward_model(np.asarray(wavelength), np.asarray(half_width),
                                                               n_layers, planet)
        self.depth, self.error = np.asarray(depth, float), np.asarray(error, float)
        self.batch = batch
        self.calls = 0

    def __call__(self, params: np.ndarray) -> np.ndarray:
        """(n, parameters) in spectra-sim PARAMETERS order -> (n,) log-likelihoods; -inf where the atmosphere is
        not physical (trace gases adding up to >= 1)."""
        params = np.atleast_2d(params)
        self.calls += len(params)
        out = np.empty(len(params))
        for i in range(0, len(params), self.batch):
            model = simulate(self.forward_model, self.matrix, params[i:i + self.batch])
            ll = -0.5 * (((model - self.depth) / self.error) ** 2).sum(axis=1)
            out[i:i + self.batch] = np.where(np.isfinite(ll), ll, -np.inf)
        return out
