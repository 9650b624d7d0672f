"""Importance-sampling correction of the spectrum network's posterior with the forward model that made its data.

The network's flow q(z | spectrum) is the proposal; each draw gets the weight w = L(spectrum | theta) p(z) / q(z),
with the spectra-sim likelihood (`trainer.spectrum_likelihood`) and the prior, which in the flow's probit space is
the standard normal. The weighted draws are a consistent estimate of the true posterior whatever the network's
errors, as long as q covers it (neural importance sampling, Dax et al. 2023, PRL 130, 171403). The effective
sample size (sum w)^2 / sum w^2 says how far to trust the result: a small share means the network missed the
posterior (a spectrum unlike the training set, or one the forward model cannot fit). The mean weight estimates
the evidence Z, on the scale of dynesty's log Z.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from datajobs.errors import DataError

# below this effective sample size, the resampled posterior repeats a few draws and is not to be trusted
MIN_EFFECTIVE_SAMPLES = 100


def latent_prior_log_density(z: np.ndarray) -> np.ndarray:
    """(n, dim) -> (n,): the uniform prior box, which the probit map makes the standard normal of the flow's
    space."""
    z = z.astype(np.float64)
    return -0.5 * (z**2).sum(axis=1) - 0.5 * z.shape[1] * math.log(2 * math.pi)


@dataclass
class ImportanceResult:
    samples: np.ndarray  # (n_out, parameters), resampled with the weights: equally weighted
    proposals: int
    effective_samples: float
    log_evidence: float
    seconds: float

    @property
    def efficiency(self) -> float:
        return self.effective_samples / self.proposals

    def summary(self) -> str:
        warn = "" if self.effective_samples >= MIN_EFFECTIVE_SAMPLES else (
            f"; fewer than {MIN_EFFECTIVE_SAMPLES} effective samples: the network is a poor proposal for this "
            "spectrum and the reweighted posterior is not reliable")
        return (f"importance sampling: {self.effective_samples:.0f} effective of {self.proposals} proposals "
                f"({100 * self.efficiency:.1f}%), log Z {self.log_evidence:.1f}, {self.seconds:.1f} s{warn}")


@torch.no_grad()
def importance_posterior(model: nn.Module, x: np.ndarray, from_latent, likelihood, proposals: int, n_out: int,
                         device: torch.device, seed: int = 0, widen: float = 1.0) -> ImportanceResult:
    """x: (1, 3, bins) network input of one spectrum; from_latent maps flow space to physical parameters;
    likelihood: (n, parameters) -> (n,) log L. Returns n_out draws resampled from `proposals` weighted ones.
    `widen` > 1 draws from the flow with its Gaussian base widened by that factor (a heavier-tailed proposal)."""
    t0 = time.perf_counter()
    module = getattr(model, "module", model)
    module.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    spectrum = torch.from_numpy(x).to(device)
    z = module.sample(spectrum, proposals, gen, base_scale=widen)[0]
    log_q = module.log_prob(spectrum, z, base_scale=widen).double().cpu().numpy()
    z = z.double().cpu().numpy()
    log_w = likelihood(from_latent(z)) + latent_prior_log_density(z) - log_q
    top = log_w.max()
    if not np.isfinite(top):
        raise DataError(f"importance sampling: none of the {proposals} network draws has a finite likelihood "
                        "under the forward model (every one is unphysical or has a non-finite density); "
                        "predict without --option importance")
    w = np.exp(log_w - top)
    effective = float(w.sum() ** 2 / (w**2).sum())
    log_evidence = float(top + math.log(w.mean()))
    rng = np.random.default_rng(seed)
    pick = rng.choice(proposals, size=n_out, replace=True, p=w / w.sum())
    return ImportanceResult(from_latent(z[pick]), proposals, effective, log_evidence, time.perf_counter() - t0)
