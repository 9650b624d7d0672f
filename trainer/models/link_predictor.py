"""Link predictor for metabolite-reaction graphs: a GraphSAGE encoder and an MLP decoder over node-pair features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class LinkPredictor(nn.Module):
    """Scores (metabolite, reaction) pairs of one graph given as node features and undirected message edges.

    The decoder sees the elementwise product and absolute difference of the two node embeddings, and optionally
    per-pair structural features (e.g. length-3 path counts) that the caller computes from the same graph.
    """

    def __init__(self, in_features: int, *, hidden: int = 64, layers: int = 2, pair_features: int = 0,
                 dropout: float = 0.1) -> None:
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.pair_features = pair_features
        self.inp = nn.Linear(in_features, hidden)
        self.convs = nn.ModuleList(SAGEConv(hidden, hidden) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = dropout
        self.decoder = nn.Sequential(nn.Linear(2 * hidden + pair_features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def encode(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = h + F.dropout(F.relu(norm(conv(h, edge_index))), self.dropout, self.training)  # residual
        return h

    def decode(self, h: torch.Tensor, pairs: torch.Tensor, pair_x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [P] of pairs [2, P] (node indices of the encoded graph)."""
        a, b = h[pairs[0]], h[pairs[1]]
        parts = [a * b, (a - b).abs()]
        if self.pair_features:
            assert pair_x is not None and pair_x.shape[1] == self.pair_features
            parts.append(pair_x)
        return self.decoder(torch.cat(parts, dim=1)).squeeze(1)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, pairs: torch.Tensor,
                pair_x: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, edge_index), pairs, pair_x)
