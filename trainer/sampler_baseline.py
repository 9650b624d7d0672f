"""Nested-sampling baseline (dynesty) over the spectra-sim priors with `trainer.spectrum_likelihood`.

Likelihood calls are batched: dynesty's `pool.map` receives `queue_size` points at once and the likelihood
computes them in vectorised forward-model chunks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from datajobs.errors import MissingExtraError
from datajobs.sources.spectra_sim import PARAMETERS, PRIORS
from trainer.spectrum_likelihood import SpectrumLikelihood


@dataclass
class SamplerResult:
    samples: np.ndarray  # (n, params), equally weighted
    seconds: float
    likelihood_calls: int
    log_evidence: float


def run_sampler(wavelength: np.ndarray, half_width: np.ndarray, depth: np.ndarray, error: np.ndarray,
                priors: dict[str, tuple[float, float]] | None = None, n_layers: int = 50, nlive: int = 200,
                dlogz: float = 0.5, seed: int = 0, batch: int = 64, bootstrap: int | None = None,
                sample: str = "auto") -> SamplerResult:
    """Posterior samples for one observed spectrum (bins given by centre and half width). `bootstrap`: dynesty's
    ellipsoid-enlargement bootstraps (None: its default; 0: a fixed enlargement, cheaper when bootstrapping
    blows the ellipsoids up). `sample`: dynesty's way of drawing a new live point; `auto` is `unif` below 10
    dimensions (uniform inside the bounding ellipsoids, so a bound that cuts off part of the likelihood
    contour cuts it off the posterior too); `rslice` (random slices that step out past the bound) does not
    depend on the bound being right, at more likelihood calls per point."""
    try:
        import dynesty
        from dynesty.utils import LoglOutput
    except ImportError:
        raise MissingExtraError("dynesty is not installed; pip install 'astrobio-train[science]'") from None
    priors = {**PRIORS, **(priors or {})}
    lo_p = np.array([priors[p][0] for p in PARAMETERS])
    hi_p = np.array([priors[p][1] for p in PARAMETERS])
    likelihood = SpectrumLikelihood(wavelength, half_width, depth, error, n_layers=n_layers)

    def loglike_batch(theta: np.ndarray) -> np.ndarray:
        return np.maximum(likelihood(theta), -1e300)  # dynesty needs finite values

    def loglike(theta: np.ndarray) -> float:
        return float(loglike_batch(np.asarray(theta)[None])[0])

    def prior_transform(u: np.ndarray) -> np.ndarray:
        return lo_p + (hi_p - lo_p) * u

    class Pool:
        """dynesty sends only likelihood batches here (the live-point initialisation, per use_pool below):
        one likelihood call per batch; the sampling steps call `loglike` one point at a time."""

        size = batch

        def map(self, func, items):
            values = loglike_batch(np.stack([np.asarray(x) for x in items]))
            return [LoglOutput(float(v), False) for v in values]

    pool = Pool()
    t0 = time.perf_counter()
    sampler = dynesty.NestedSampler(loglike, prior_transform, len(PARAMETERS), nlive=nlive,
                                    rstate=np.random.default_rng(seed), pool=pool, queue_size=batch,
                                    bootstrap=bootstrap, sample=sample,
                                    use_pool={"prior_transform": False, "loglikelihood": True,
                                              "propose_point": False, "update_bound": False})
    sampler.run_nested(dlogz=dlogz, print_progress=False)
    seconds = time.perf_counter() - t0
    res = sampler.results
    samples = res.samples_equal(rstate=np.random.default_rng(seed))
    return SamplerResult(samples, seconds, likelihood.calls, float(res.logz[-1]))
