"""A small multilayer perceptron for tabular regression."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear -> SiLU blocks with LayerNorm, then a linear head; no I/O, no parallelism."""

    def __init__(self, in_features: int, out_features: int, hidden: int, layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
            if dropout:
                blocks.append(nn.Dropout(dropout))
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
