"""Retrieval network: a 1-D CNN over (depth, uncertainty, mask) per bin conditioning a normalizing flow.

The encoder splits each spectrum into its mean depth over the observed bins (set mostly by the planet radius) and
the depths relative to that mean (the absorption features), so the convolutions see features at their own scale
instead of riding on a level that varies more across the training set than the features do.

Two flows map standardised parameters theta to a standard normal z; both have an exact log-density and an exact
inverse (sampling), which is what a posterior needs (ADC2023's best entries were flows):
- `ConditionalFlow` (RealNVP, Dinh et al. 2017): conditional affine couplings with fixed permutations;
- `SplineFlow`: rational-quadratic spline transforms (neural spline flow, Durkan et al. 2019), built with `zuko`,
  either coupling (half the parameters condition the other half; two network passes to sample) or fully
  autoregressive (one pass per parameter to sample); each parameter's conditional is a monotone spline, so it
  can bend along curved ridges and be skewed, which an affine map cannot.
Masked bins enter as zeros with mask 0, so one network serves spectra of any subset of the training bins
(PRISM, G395H, or both). `RetrievalEnsemble` holds several independently initialised networks whose posterior is
their equal-weight mixture (a deep ensemble, Lakshminarayanan et al. 2017).
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
import zuko
from torch import nn


class SpectrumEncoder(nn.Module):
    """(B, 3, nbins) -> (B, context). Input channels: depth and 1-sigma error (both in one global scale) and the
    observed mask; `relative_gain` rescales depths relative to the spectrum's mean to about unit spread."""

    def __init__(self, n_bins: int, channels: int, context: int, relative_gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("relative_gain", torch.tensor(float(relative_gain)))
        self.conv = nn.Sequential(
            nn.Conv1d(3, channels, 5, padding=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2, stride=2), nn.GELU(),
        )
        reduced = math.ceil(math.ceil(n_bins / 2) / 2)
        self.flatten = nn.Flatten()
        self.head = nn.Sequential(nn.Linear(channels * reduced + 1, context), nn.GELU(), nn.Linear(context, context))

    def split_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, nbins) -> (B, 1) mean depth over observed bins and (B, 3, nbins) relative depth, error, mask."""
        mask = x[:, 2]
        level = (x[:, 0] * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp_min(1.0)
        relative = (x[:, 0] - level) * mask * self.relative_gain
        return level, torch.stack([relative, x[:, 1] * mask * self.relative_gain, mask], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level, features = self.split_level(x)
        return self.head(torch.cat([self.flatten(self.conv(features)), level], dim=1))


class AffineCoupling(nn.Module):
    """x_b' = x_b * exp(s(x_a, c)) + t(x_a, c) for the unmasked half b; identity on a. In 1-D, a is empty and
    s, t depend on the context only."""

    def __init__(self, mask: torch.Tensor, context: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        dim = mask.numel()
        self.net = nn.Sequential(nn.Linear(dim + context, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 * dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, xa: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(torch.cat([xa, c], dim=1)).chunk(2, dim=1)
        s = 2.0 * torch.tanh(s / 2.0) * (1 - self.mask)  # bounded log-scale
        return s, t * (1 - self.mask)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask, c)
        return x * torch.exp(s) + t, s.sum(dim=1)

    def inverse(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s, t = self._st(y * self.mask, c)
        return (y - t) * torch.exp(-s)


class BaseNormalFlow(nn.Module):
    """log p(theta | c) = log N(f(theta); 0, I) + log|det df/dtheta| for an invertible f given by the subclass's
    `to_base` (theta -> z and log|det|) and `from_base` (z -> theta); `base_scale` > 1 gives the widened flow
    whose base is N(0, base_scale^2 I)."""

    dim: int

    def to_base(self, theta: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def from_base(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The inverse map: base points z (N, dim) with their contexts c (N, context) -> theta (N, dim)."""
        raise NotImplementedError

    def log_prob(self, theta: torch.Tensor, c: torch.Tensor, base_scale: float = 1.0) -> torch.Tensor:
        x, logdet = self.to_base(theta, c)
        base = (-0.5 * ((x / base_scale) ** 2).sum(dim=1) - self.dim * math.log(base_scale)
                - 0.5 * self.dim * math.log(2 * math.pi))
        return base + logdet

    def sample(self, c: torch.Tensor, n: int, generator: torch.Generator | None = None,
               base_scale: float = 1.0) -> torch.Tensor:
        """(B, context) -> (B, n, dim) samples (of the widened flow for base_scale > 1)."""
        b = c.shape[0]
        z = torch.randn(b * n, self.dim, generator=generator, device=c.device, dtype=c.dtype) * base_scale
        return self.from_base(z, c.repeat_interleave(n, dim=0)).reshape(b, n, self.dim)


class ConditionalFlow(BaseNormalFlow):
    """f = `layers` conditional affine couplings (RealNVP).

    Couplings come in pairs with complementary masks on the same ordering, so each pair transforms every
    parameter once; a fixed random permutation before each pair mixes which parameters condition which. (A
    random permutation before every layer, as before 2026-12-03, left one parameter of seven untouched by all
    six couplings: its posterior was the prior whatever the spectrum.)"""

    def __init__(self, dim: int, context: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.dim = dim
        masks = []
        for k in range(layers):
            m = torch.zeros(dim)
            if dim > 1:
                m[(k % 2)::2] = 1.0
            masks.append(m)
        self.couplings = nn.ModuleList(AffineCoupling(m, context, hidden) for m in masks)
        perms = [torch.randperm(dim, generator=torch.Generator().manual_seed(k)) if k % 2 == 0 else torch.arange(dim)
                 for k in range(layers)]
        self.register_buffer("perms", torch.stack(perms))
        self.register_buffer("inverse_perms", torch.stack([torch.argsort(p) for p in perms]))

    def to_base(self, theta: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = theta, torch.zeros(theta.shape[0], device=theta.device, dtype=theta.dtype)
        for coupling, perm in zip(self.couplings, self.perms, strict=True):
            x, ld = coupling(x[:, perm], c)
            logdet = logdet + ld
        return x, logdet

    def from_base(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for coupling, inv in zip(reversed(self.couplings), reversed(self.inverse_perms), strict=True):
            z = coupling.inverse(z, c)[:, inv]
        return z


class SplineFlow(BaseNormalFlow):
    """f = `layers` rational-quadratic spline transforms (zuko's NSF, `bins` segments on [-5, 5], identity
    outside) with the variable order reversed between transforms, coupling or autoregressive. Same interface as
    `ConditionalFlow`; the base draw is taken from the caller's generator, so sampling is reproducible."""

    def __init__(self, dim: int, context: int, hidden: int, layers: int, bins: int = 8,
                 coupling: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.nsf = zuko.flows.NSF(dim, context=context, bins=bins, transforms=layers, hidden_features=(hidden, hidden),
                                  passes=2 if coupling else None)

    def to_base(self, theta: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.nsf(c).transform.call_and_ladj(theta)

    def from_base(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.nsf(c).transform.inv(z)


FlowName = Literal["affine", "spline-coupling", "spline-autoregressive"]
FLOWS: tuple[str, ...] = get_args(FlowName)


class RetrievalModel(nn.Module):
    """Spectrum (B, 3, nbins) -> conditional flow (`flow`: one of FLOWS) over standardised parameters."""

    def __init__(self, n_bins: int, n_params: int, channels: int = 32, context: int = 64, hidden: int = 128,
                 layers: int = 6, relative_gain: float = 1.0, flow: FlowName = "affine", spline_bins: int = 8) -> None:
        super().__init__()
        self.encoder = SpectrumEncoder(n_bins, channels, context, relative_gain)
        if flow == "affine":
            self.flow: BaseNormalFlow = ConditionalFlow(n_params, context, hidden, layers)
        elif flow in FLOWS:
            self.flow = SplineFlow(n_params, context, hidden, layers, spline_bins, coupling=flow == "spline-coupling")
        else:
            raise ValueError(f"flow must be one of {FLOWS}, not {flow!r}")

    def forward(self, spectrum: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Log-density of standardised theta given the spectrum, (B,)."""
        return self.log_prob(spectrum, theta)

    def log_prob(self, spectrum: torch.Tensor, theta: torch.Tensor, base_scale: float = 1.0) -> torch.Tensor:
        """(B or 1, 3, bins), (B, dim) -> (B,); one spectrum serves every theta row."""
        c = self.encoder(spectrum)
        return self.flow.log_prob(theta, c.expand(theta.shape[0], -1) if c.shape[0] == 1 else c, base_scale)

    @torch.no_grad()
    def sample(self, spectrum: torch.Tensor, n: int, generator: torch.Generator | None = None,
               base_scale: float = 1.0) -> torch.Tensor:
        """(B, 3, bins) -> (B, n, dim) standardised draws (of the widened flow for base_scale > 1)."""
        return self.flow.sample(self.encoder(spectrum), n, generator, base_scale)


class RetrievalEnsemble(nn.Module):
    """`members` RetrievalModels built one after another (so each starts from its own random weights). The
    posterior is their equal-weight mixture. `forward` is the members' mean log-density: minimising its negative
    trains each member on its own (they see the same batches; only the global gradient-norm clip couples them)."""

    def __init__(self, members: int, **model_kwargs: Any) -> None:
        super().__init__()
        if members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, not {members}")
        self.members = nn.ModuleList(RetrievalModel(**model_kwargs) for _ in range(members))

    def forward(self, spectrum: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(spectrum, theta) for m in self.members]).mean(dim=0)

    def log_prob(self, spectrum: torch.Tensor, theta: torch.Tensor, base_scale: float = 1.0) -> torch.Tensor:
        """The mixture's log-density, (B,)."""
        logs = torch.stack([m.log_prob(spectrum, theta, base_scale) for m in self.members])
        return torch.logsumexp(logs, dim=0) - math.log(len(self.members))

    @torch.no_grad()
    def sample(self, spectrum: torch.Tensor, n: int, generator: torch.Generator | None = None,
               base_scale: float = 1.0) -> torch.Tensor:
        """(B, 3, bins) -> (B, n, dim): each member draws its share (n // members, the first n % members one more),
        then the draws are shuffled so any prefix is a mixture sample too."""
        k = len(self.members)
        draws = torch.cat([m.sample(spectrum, n // k + (i < n % k), generator, base_scale)
                           for i, m in enumerate(self.members)], dim=1)
        order = torch.randperm(n, generator=generator, device=draws.device)
        return draws[:, order]
