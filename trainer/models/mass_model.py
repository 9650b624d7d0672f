"""Planet mass as a heteroscedastic Gaussian over log10 mass: an ensemble correcting Chen & Kipping (2017)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

EARTH_DENSITY = 5.514  # g/cm^3, mean density of the Earth


class BatchedLinear(nn.Module):
    """K independent linear layers applied to K stacked inputs: (K, B, in) -> (K, B, out)."""

    def __init__(self, members: int, in_features: int, out_features: int, init_std: float | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        if init_std is None:  # nn.Linear's default, drawn separately for every member
            weight = torch.empty(members, in_features, out_features).uniform_(-bound, bound)
        else:
            weight = torch.randn(members, in_features, out_features) * init_std
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class MassModel(nn.Module):
    """log10 M ~ N(mu_k, sigma_k^2) for each of K ensemble members, per planet.

    mu_k = clamp(CK(R) + g * B * tanh(a_k(x)), density bounds) and sigma_k = s_CK(R) * exp(g * S tanh(b_k(x))),
    where CK and s_CK are the Chen & Kipping (2017) posterior median and spread of log10 M at radius R
    (tabulated on a log-radius grid), B bounds the correction in dex, S the log-factor on the scatter, and g in
    [0, 1] is a domain gate: 1 while the mean distance d of x to its k nearest training points stays within r
    (a high percentile of the training points' own leave-one-out distances), then exp(-((d - r) / (w r))^2).
    Far from the training data the prediction is therefore the published relation with its own scatter; near it
    the network may correct it by at most B dex.
    """

    def __init__(self, in_features: int, hidden: int, layers: int, members: int, *, reference: torch.Tensor,
                 domain_radius: float, anchor_log_r: tuple[float, float], anchor_mu: torch.Tensor,
                 anchor_sigma: torch.Tensor, max_correction_dex: float = 1.0, neighbours: int = 5,
                 density_range: tuple[float, float] = (0.05, 30.0), dropout: float = 0.0,
                 gate_width: float = 0.5, max_log_sigma_factor: float = 1.0) -> None:
        super().__init__()
        self.members, self.max_correction, self.neighbours = members, max_correction_dex, neighbours
        self.dropout, self.gate_width, self.max_log_sigma_factor = dropout, gate_width, max_log_sigma_factor
        self.anchor_lo, self.anchor_hi = anchor_log_r
        margin = 1e-3  # dex inside the range, so that float32 rounding never leaves it
        self.log_density_lo = math.log10(density_range[0] / EARTH_DENSITY) + margin
        self.log_density_hi = math.log10(density_range[1] / EARTH_DENSITY) - margin
        self.register_buffer("reference", reference.float())  # (N, D) scaled domain features of training rows
        self.register_buffer("domain_radius", torch.tensor(float(domain_radius)))
        self.register_buffer("anchor_mu", anchor_mu.float())
        self.register_buffer("anchor_sigma", anchor_sigma.float())
        blocks: list[BatchedLinear] = []
        width = in_features
        for _ in range(layers):
            blocks.append(BatchedLinear(members, width, hidden))
            width = hidden
        self.blocks = nn.ModuleList(blocks)
        self.head = BatchedLinear(members, width, 2, init_std=0.01)

    def anchor(self, log_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chen & Kipping posterior median and spread of log10 M, linearly interpolated in log R."""
        grid = self.anchor_mu.shape[0]
        pos = ((log_r - self.anchor_lo) / (self.anchor_hi - self.anchor_lo) * (grid - 1)).clamp(0, grid - 1)
        i0 = pos.floor().long().clamp(max=grid - 2)
        w = pos - i0
        mu = self.anchor_mu[i0] * (1 - w) + self.anchor_mu[i0 + 1] * w
        sigma = self.anchor_sigma[i0] * (1 - w) + self.anchor_sigma[i0 + 1] * w
        return mu, sigma

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """1 inside the training domain, -> 0 as the kNN distance grows past the domain radius."""
        dom = x[:, : self.reference.shape[1]]
        k = min(self.neighbours, self.reference.shape[0])
        d = torch.cdist(dom, self.reference).topk(k, dim=1, largest=False).values.mean(dim=1)
        excess = F.relu(d - self.domain_radius) / (self.gate_width * self.domain_radius)
        return torch.exp(-(excess**2))

    def forward(self, x: torch.Tensor, log_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, F) scaled features (domain features first), log_r: (B,) log10 radius. Returns mu, sigma (B, K)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, log_r = x.float(), log_r.float()
            h = x.unsqueeze(0).expand(self.members, -1, -1)
            for block in self.blocks:
                z = block(h)
                h = F.dropout(F.silu(F.layer_norm(z, (z.shape[-1],))), self.dropout, self.training)
            out = self.head(h)  # (K, B, 2)
            a, b = out[..., 0].T, out[..., 1].T  # (B, K)
            g = self.gate(x).unsqueeze(1)
            ck_mu, ck_sigma = self.anchor(log_r)
            mu = ck_mu.unsqueeze(1) + g * self.max_correction * torch.tanh(a)
            lo = (self.log_density_lo + 3 * log_r).unsqueeze(1)
            hi = (self.log_density_hi + 3 * log_r).unsqueeze(1)
            mu = torch.maximum(torch.minimum(mu, hi), lo)
            sigma = ck_sigma.unsqueeze(1) * torch.exp(g * self.max_log_sigma_factor * torch.tanh(b))
        return mu, sigma


def gaussian_nll(mu: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor, y_err: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of y (B,) under N(mu, sigma^2 + y_err^2) for each member (B, K).

    y_err is the measurement uncertainty of y (0 where unknown); weights (B, K) are Poisson(1) bootstrap counts.
    The weighted sum is divided by the number of entries (the weights' expected sum), not by the batch's own
    weight sum, so the loss does not depend on how a global batch is split across data-parallel ranks."""
    var = sigma**2 + y_err.unsqueeze(1) ** 2
    nll = 0.5 * (torch.log(2 * math.pi * var) + (y.unsqueeze(1) - mu) ** 2 / var)
    if weights is None:
        return nll.mean()
    return (nll * weights).mean()


def mixture_cdf(value: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """CDF at value (B,) of the equal-weight mixture of the members' Gaussians (B, K): the predictive
    distribution, whose spread holds both the members' own (aleatoric) variance and their disagreement."""
    return torch.special.ndtr((value.unsqueeze(1) - mu) / sigma).mean(dim=1)


def mixture_quantiles(mu: torch.Tensor, sigma: torch.Tensor, levels: list[float],
                      iterations: int = 60) -> torch.Tensor:
    """Quantiles (B, len(levels)) of the predictive mixture, by bisection on its CDF."""
    out = []
    for q in levels:
        lo, hi = (mu - 10 * sigma).min(dim=1).values, (mu + 10 * sigma).max(dim=1).values
        for _ in range(iterations):
            mid = (lo + hi) / 2
            below = mixture_cdf(mid, mu, sigma) < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        out.append((lo + hi) / 2)
    return torch.stack(out, dim=1)


class CentralIntervalCalibration:
    """Central intervals recalibrated on held-out validation rows (the central-interval form of the
    recalibration of Kuleshov, Fenner & Ermon 2018, ICML, "Accurate uncertainties for deep learning using
    calibrated regression").

    Each validation planet sits at the central level 2|PIT - 0.5| of its predictive mixture. The calibrated
    c-interval is the mixture's central interval at the level below which a share c of the validation planets
    sit (linear interpolation of their empirical distribution). The median is not moved, so point predictions
    and their RMSE are those of the mixture itself.
    """

    def __init__(self, levels: np.ndarray) -> None:
        self.levels = np.sort(np.asarray(levels, dtype=np.float64))  # 2|PIT - 0.5| of the validation rows
        n = len(self.levels)
        if n == 0 or not np.all(np.isfinite(self.levels)):
            raise ValueError("interval calibration needs finite central levels of at least one validation row")
        self._share = np.concatenate([[0.0], np.arange(1, n + 1) / (n + 1), [1.0]])
        self._level = np.concatenate([[0.0], self.levels, [1.0]])

    @classmethod
    def from_pit(cls, pit: np.ndarray) -> CentralIntervalCalibration:
        return cls(2 * np.abs(np.asarray(pit, dtype=np.float64) - 0.5))

    def mixture_level(self, coverage: float) -> float:
        """The mixture's central level whose interval held `coverage` of the validation rows."""
        return float(np.interp(coverage, self._share, self._level))

    def calibrated_level(self, level: np.ndarray) -> np.ndarray:
        """The calibrated central level of points at mixture central level `level` (the inverse map)."""
        return np.interp(level, self._level, self._share)
