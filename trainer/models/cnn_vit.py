"""CNN-ViT climate emulator: planet parameters + forcing fields -> every variable on every level (plus its losses).

Architecture (ClimaX-style tokenisation, Nguyen et al. 2023):
- each input field (land mask, top-of-atmosphere insolation, cos latitude) passes a small CNN stem with circular
  padding in longitude (zero padding in latitude), then a per-variable patch embedding; a learned variable
  embedding is added and the variables of one patch are aggregated by cross-attention with one learned query,
  so the token sequence length (patches) does not depend on the number of variables;
- position: a learned embedding per patch row (latitude) only. Longitude enters through the input fields and the
  circular padding, never as an absolute position, so the whole network is equivariant to longitudinal rolls by
  whole patches (the sphere has no preferred meridian; a synchronous planet's substellar point is in the
  insolation field). Tested: rolling the inputs by k patches rolls the prediction by k patches;
- a transformer trunk whose blocks are FiLM-conditioned on the planet parameters;
- a decoder: per-token linear map to patch pixels for every output channel, then a circular-padded conv.

Losses: latitude-weighted MSE over standardised channels (weights cos(lat), normalised to sum to 1 over
latitudes), and an energy-balance term: the squared difference between the predicted global-mean net top
radiation (absorbed short-wave + net long-wave) and the simulator's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CircularConv(nn.Module):
    """3x3 conv padded circularly in longitude (last axis) and with zeros in latitude."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 0, 0), mode="circular")
        return self.conv(F.pad(x, (0, 0, 1, 1)))


class FiLMBlock(nn.Module):
    """Pre-norm transformer block whose norms are scaled and shifted by the planet-parameter embedding."""

    def __init__(self, dim: int, heads: int, cond: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.film = nn.Linear(cond, 4 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = self.film(c).unsqueeze(1).chunk(4, dim=-1)
        h = self.norm1(x) * (1 + g1) + b1
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x) * (1 + g2) + b2)


class CNNViT(nn.Module):
    """(fields [B, Vin, lat, lon], params [B, P]) -> standardised outputs [B, Cout, lat, lon]."""

    def __init__(self, in_vars: int, n_params: int, out_channels: int, n_lat: int, n_lon: int, *, patch: int = 4,
                 dim: int = 64, depth: int = 2, heads: int = 4, stem: int = 16) -> None:
        super().__init__()
        if n_lat % patch or n_lon % patch:
            raise ValueError(f"grid {n_lat}x{n_lon} is not divisible by patch {patch}")
        self.patch, self.out_channels = patch, out_channels
        self.rows, self.cols = n_lat // patch, n_lon // patch
        self.stems = nn.ModuleList(nn.Sequential(CircularConv(1, stem), nn.GELU(), CircularConv(stem, stem), nn.GELU())
                                   for _ in range(in_vars))
        self.patch_embed = nn.ModuleList(nn.Conv2d(stem, dim, patch, stride=patch) for _ in range(in_vars))
        self.var_embed = nn.Parameter(torch.randn(in_vars, dim) * 0.02)
        self.agg_query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.agg = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.row_embed = nn.Parameter(torch.randn(self.rows, dim) * 0.02)
        self.cond = nn.Sequential(nn.Linear(n_params, dim), nn.GELU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(FiLMBlock(dim, heads, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_channels * patch * patch)
        self.refine = CircularConv(out_channels, out_channels)

    def forward(self, fields: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        b = fields.shape[0]
        per_var = []
        for v, (stem, embed) in enumerate(zip(self.stems, self.patch_embed, strict=True)):
            tokens = embed(stem(fields[:, v : v + 1])).flatten(2).transpose(1, 2)  # [B, N, D]
            per_var.append(tokens + self.var_embed[v])
        x = torch.stack(per_var, dim=2)  # [B, N, V, D]
        n, v, d = x.shape[1], x.shape[2], x.shape[3]
        kv = x.reshape(b * n, v, d)
        x = self.agg(self.agg_query.expand(b * n, 1, d), kv, kv, need_weights=False)[0].reshape(b, n, d)
        x = x + self.row_embed.repeat_interleave(self.cols, dim=0)
        c = self.cond(params)
        for block in self.blocks:
            x = block(x, c)
        out = self.head(self.norm(x))  # [B, N, Cout * p * p]
        p = self.patch
        out = out.reshape(b, self.rows, self.cols, self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        out = out.reshape(b, self.out_channels, self.rows * p, self.cols * p)
        return out + self.refine(out)


def latitude_weights(lat_deg: torch.Tensor) -> torch.Tensor:
    """cos(latitude) weights normalised to sum to 1 over the latitudes."""
    w = torch.cos(torch.deg2rad(lat_deg.double())).clamp_min(0)
    return (w / w.sum()).to(lat_deg.dtype if lat_deg.is_floating_point() else torch.float32)


def lat_weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over batch and channels of the area-weighted squared error ([B, C, lat, lon] inputs)."""
    per_lat = ((pred - target) ** 2).mean(dim=-1)  # [B, C, lat]
    return (per_lat * weights).sum(dim=-1).mean()


def global_mean(field: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Area-weighted global mean of [..., lat, lon] fields."""
    return (field.mean(dim=-1) * weights).sum(dim=-1)


def energy_imbalance(absorbed_sw: torch.Tensor, net_lw: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Global-mean net top-of-atmosphere radiation [W m-2]: absorbed short-wave + net long-wave (negative up)."""
    return global_mean(absorbed_sw + net_lw, weights)


def energy_term(absorbed_sw: torch.Tensor, net_lw: torch.Tensor, true_imbalance: torch.Tensor,
                weights: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mean squared difference (in units of `scale` W m-2) of predicted vs simulated global imbalance."""
    return (((energy_imbalance(absorbed_sw, net_lw, weights) - true_imbalance) / scale) ** 2).mean()
