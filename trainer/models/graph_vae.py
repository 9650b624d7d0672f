"""Molecular graph VAE: graph-transformer encoder (bond/distance-biased attention, sign-invariant Laplacian and
random-walk PE), Gaussian latent, autoregressive BFS decoder (atom, parent bond, ring bonds) with a valence mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_geometric.utils import to_dense_adj, to_dense_batch

BOND_CLASSES = 4  # 0 = no bond, 1/2/3 = kekulized bond order
DROPOUT_SALT = 0x5BD1E995  # decoder input dropout draws, independent of the latent noise


def laplacian_pe(num_nodes: int, edges: list[tuple[int, int]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k eigenvectors of the symmetric normalized Laplacian after the trivial one, and their eigenvalues
    (both [num_nodes, k], zero-padded when the graph has fewer); signs are arbitrary (the encoder is invariant)."""
    adj = np.zeros((num_nodes, num_nodes))
    for i, j in edges:
        adj[i, j] = adj[j, i] = 1.0
    deg = adj.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    lap = np.eye(num_nodes) - inv[:, None] * adj * inv[None, :]
    vals, vecs = np.linalg.eigh(lap)
    vecs, vals = vecs[:, 1 : k + 1], vals[1 : k + 1]
    out_v = np.zeros((num_nodes, k), dtype=np.float32)
    out_l = np.zeros((num_nodes, k), dtype=np.float32)
    out_v[:, : vecs.shape[1]] = vecs
    out_l[:, : vals.shape[0]] = vals[None, :]
    return out_v, out_l


def hashed_uniform(keys: torch.Tensor, step: int, dim: int, salt: int = 0x165667B1) -> torch.Tensor:
    """Uniform (0, 1) numbers [len(keys), dim] that depend only on (key, step, salt): the same molecule gets the
    same draw whatever the batch, rank count or device, so 2 DDP ranks equal 1 and a resume repeats exactly."""
    d = torch.arange(dim, device=keys.device, dtype=torch.int64)
    x = keys.to(torch.int64)[:, None] * 0x9E3779B1 + int(step) * 0x85EBCA77 + d[None, :] * 0x27D4EB2F + salt
    for mult in (0x2545F4914F6CDD1D, 0x1B873593CC9E2D51):
        x = (x ^ (x >> 29)) * mult  # int64 multiply wraps: a fixed mixing function
    x = x ^ (x >> 32)
    return ((x & 0xFFFFFF).to(torch.float32) + 0.5) / float(1 << 24)


def hashed_normal(keys: torch.Tensor, step: int, dim: int) -> torch.Tensor:
    """Standard normal noise [len(keys), dim] from `hashed_uniform` (Box-Muller)."""
    u = hashed_uniform(keys, step, 2 * dim)
    u1, u2 = u[:, :dim], u[:, dim:]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)


@dataclass
class Decoded:
    """A batch of generated graphs: tokens per molecule and bonds (i, j, order) per molecule."""

    tokens: list[list[int]]
    bonds: list[list[tuple[int, int, int]]]


class SignInvariantLapPE(nn.Module):
    """SignNet-style: sum over eigenvectors of phi(v, lambda) + phi(-v, lambda), then rho (per node)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, dim))
        self.rho = nn.Linear(dim, dim)

    def forward(self, vecs: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        present = (vals > 0).unsqueeze(-1).to(vecs.dtype)
        pos = self.phi(torch.stack([vecs, vals], -1))
        neg = self.phi(torch.stack([-vecs, vals], -1))
        return self.rho(((pos + neg) * present).sum(-2))


class BiasedAttentionLayer(nn.Module):
    """Pre-norm transformer layer whose attention logits get per-head biases by bond type and shortest-path distance."""

    def __init__(self, dim: int, heads: int, max_distance: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.bond_bias = nn.Embedding(BOND_CLASSES, heads)
        self.dist_bias = nn.Embedding(max_distance + 2, heads)  # 0..max_distance, then "farther or unreachable"
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, bonds: torch.Tensor, dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        bias = (self.bond_bias(bonds) + self.dist_bias(dist)).permute(0, 3, 1, 2)
        logits = q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5 + bias
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        h = h + self.out(att)
        return h + self.ff(self.norm2(h))


class GraphVAE(nn.Module):
    """Encoder and decoder over dense per-batch tensors; `forward(batch)` returns the loss terms (training)."""

    def __init__(self, num_tokens: int, max_valence: list[int], max_atoms: int, *, hidden: int = 128,
                 latent: int = 32, layers: int = 3, heads: int = 4, lap_k: int = 4, rw_steps: int = 8,
                 max_distance: int = 6, beta: float = 1.0, kl_anneal_steps: int = 1000,
                 free_bits: float = 0.05, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tokens, self.max_atoms, self.latent = num_tokens, max_atoms, latent
        self.rw_steps, self.max_distance = rw_steps, max_distance
        self.beta_max, self.kl_anneal_steps, self.free_bits = beta, kl_anneal_steps, free_bits
        self.input_dropout = input_dropout
        self.register_buffer("max_valence", torch.tensor(max_valence, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards, for KL annealing
        # encoder
        self.atom_emb = nn.Embedding(num_tokens, hidden)
        self.degree_emb = nn.Embedding(8, hidden)
        self.lap_pe = SignInvariantLapPE(hidden)
        self.rw_pe = nn.Linear(rw_steps, hidden)
        self.layers = nn.ModuleList(BiasedAttentionLayer(hidden, heads, max_distance) for _ in range(layers))
        self.enc_norm = nn.LayerNorm(hidden)
        self.to_latent = nn.Linear(2 * hidden, 2 * latent)
        # decoder
        self.z_to_h = nn.Linear(latent, hidden)
        self.in_atom = nn.Embedding(num_tokens + 1, hidden)  # + start token
        self.in_parent_bond = nn.Embedding(BOND_CLASSES, hidden)
        self.in_rings = nn.Embedding(4, hidden)  # ring-closure bonds of the previous atom: 0, 1, 2, 3+
        # the GRU input of a dropped-out step (training only); absent without dropout (DDP: no unused parameter)
        self.in_dropped = nn.Parameter(torch.zeros(hidden)) if input_dropout > 0 else None
        self.gru = nn.GRU(hidden + latent, hidden, batch_first=True)
        self.atom_head = nn.Linear(hidden, num_tokens + 1)  # + STOP
        self.q_emb = nn.Embedding(num_tokens, hidden)
        self.q_lin = nn.Linear(hidden, hidden)
        self.m_emb = nn.Embedding(num_tokens, hidden)
        self.rem_emb = nn.Embedding(10, hidden)  # remaining valence clamped to [-1, 8], shifted by 1
        self.key_lin = nn.Linear(hidden, hidden)
        self.parent_bond_head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 3))
        self.ring_head = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.GELU(), nn.Linear(hidden, BOND_CLASSES))

    @property
    def stop(self) -> int:
        return self.num_tokens

    def _rem(self, rem: torch.Tensor) -> torch.Tensor:
        return self.rem_emb(rem.clamp(-1, 8) + 1)

    # -- encoder ---------------------------------------------------------------------------------
    def dense(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [B,N], node mask [B,N], bond orders [B,N,N]) of a PyG batch."""
        tokens, mask = to_dense_batch(batch.x, batch.batch)
        bonds = to_dense_adj(batch.edge_index, batch.batch, batch.edge_attr, max_num_nodes=tokens.shape[1])
        return tokens, mask, bonds.long()

    def structure(self, bonds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shortest-path distance buckets [B,N,N] and random-walk return probabilities [B,N,rw_steps]."""
        adj = (bonds > 0).to(torch.float32)
        n = adj.shape[-1]
        eye = torch.eye(n, device=adj.device, dtype=torch.bool).expand_as(adj)
        far = self.max_distance + 1
        dist = torch.full(adj.shape, far, dtype=torch.long, device=adj.device)
        dist[eye] = 0
        reach, seen = eye.to(torch.float32), eye.clone()
        for k in range(1, self.max_distance + 1):
            reach = ((reach @ adj) > 0).to(torch.float32)
            new = reach.bool() & ~seen
            dist[new] = k
            seen |= new
        walk = adj / adj.sum(-1, keepdim=True).clamp(min=1.0)
        power, rw = walk, []
        for _ in range(self.rw_steps):
            rw.append(torch.diagonal(power, dim1=-2, dim2=-1))
            power = power @ walk
        return dist, torch.stack(rw, -1) * mask.unsqueeze(-1)

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) [B, latent]; invariant to node order and to eigenvector signs."""
        tokens, mask, bonds = self.dense(batch)
        lap, _ = to_dense_batch(batch.lap, batch.batch)
        lap_val, _ = to_dense_batch(batch.lap_val, batch.batch)
        dist, rw = self.structure(bonds, mask)
        degree = (bonds > 0).sum(-1).clamp(max=7)
        h = self.atom_emb(tokens) + self.degree_emb(degree) + self.lap_pe(lap, lap_val) + self.rw_pe(rw)
        for layer in self.layers:
            h = layer(h, bonds, dist, mask)
        h = self.enc_norm(h) * mask.unsqueeze(-1)
        count = mask.sum(1, keepdim=True).clamp(min=1)
        peak = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)  # padding never wins the max
        pooled = torch.cat([h.sum(1) / count, peak], -1)
        mu, logvar = self.to_latent(pooled).chunk(2, -1)
        return mu, logvar.clamp(-10, 10)

    def node_states(self, batch) -> torch.Tensor:
        """Per-node encoder outputs [num_nodes, hidden] (for the equivariance test)."""
        tokens, mask, bonds = self.dense(batch)
        lap, _ = to_dense_batch(batch.lap, batch.batch)
        lap_val, _ = to_dense_batch(batch.lap_val, batch.batch)
        dist, rw = self.structure(bonds, mask)
        degree = (bonds > 0).sum(-1).clamp(max=7)
        h = self.atom_emb(tokens) + self.degree_emb(degree) + self.lap_pe(lap, lap_val) + self.rw_pe(rw)
        for layer in self.layers:
            h = layer(h, bonds, dist, mask)
        return self.enc_norm(h)[mask]

    # -- decoder (teacher forcing) -------------------------------------------------------------------
    def _step_input(self, prev_tok: torch.Tensor, parent_bond: torch.Tensor, rings: torch.Tensor,
                    z: torch.Tensor, dropped: torch.Tensor | None = None) -> torch.Tensor:
        x = self.in_atom(prev_tok) + self.in_parent_bond(parent_bond) + self.in_rings(rings.clamp(max=3))
        if dropped is not None and self.in_dropped is not None:  # Bowman et al. 2016 word dropout
            x = torch.where(dropped.unsqueeze(-1), self.in_dropped.to(x.dtype).expand_as(x), x)
        return torch.cat([x, z if x.dim() == 2 else z[:, None, :].expand(-1, x.shape[1], -1)], -1)

    def reconstruction_loss(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                            bonds: torch.Tensor, dropped: torch.Tensor | None = None) -> torch.Tensor:
        """Negative log-likelihood per molecule [B] of its BFS-ordered atoms, parent bonds and ring bonds;
        `dropped` [B, n+1] marks GRU steps whose teacher-forced input (the previous atom) is replaced."""
        b, n = tokens.shape
        dev = tokens.device
        count = mask.sum(1)
        idx = torch.arange(n, device=dev)
        lower = idx[None, :] < idx[:, None]  # [t, j]: j < t
        nbr = (bonds > 0) & lower
        parent = nbr.to(torch.float32).argmax(-1)  # first earlier neighbour = BFS parent (0 for atom 0)
        parent_bond = bonds.gather(2, parent.unsqueeze(-1)).squeeze(-1) * (idx > 0)
        after_parent = idx[None, None, :] > parent.unsqueeze(-1)
        ring_mask = lower & after_parent & mask.unsqueeze(-1) & mask.unsqueeze(1)  # [B,t,j]
        rings = ((bonds > 0) & ring_mask).sum(-1)
        # GRU over steps 0..n: input at t describes atom t-1
        start = torch.full((b, 1), self.num_tokens, device=dev, dtype=torch.long)
        prev_tok = torch.cat([start, tokens], 1)
        prev_pb = torch.cat([torch.zeros_like(start), parent_bond], 1)
        prev_rings = torch.cat([torch.zeros_like(start), rings], 1)
        h0 = torch.tanh(self.z_to_h(z)).unsqueeze(0)
        hs, _ = self.gru(self._step_input(prev_tok, prev_pb, prev_rings, z, dropped), h0)  # [B, n+1, H]
        # atoms (STOP after the last)
        target = torch.where(mask, tokens, torch.full_like(tokens, -100))
        target = torch.cat([target, torch.full_like(start, -100)], 1)
        target[torch.arange(b, device=dev), count] = self.stop
        atom_nll = F.cross_entropy(self.atom_head(hs).transpose(1, 2), target, reduction="none").sum(1)
        # valence bookkeeping: used_j(t) = bond orders of j to atoms < t
        excl = torch.cumsum(bonds, -1) - bonds  # [B, j, t]: sum over i < t of bonds[j, i]
        maxv = self.max_valence[tokens]  # [B, N]
        rem_j = (maxv.unsqueeze(-1) - excl).transpose(1, 2)  # [B, t, j]
        rem_t = maxv.unsqueeze(-1) - excl  # [B, t, j]: atom t before deciding its bond to j
        q = self.q_lin(hs[:, :n] + self.q_emb(tokens))  # [B, t, H]
        mem = hs[:, 1:] + self.m_emb(tokens)  # [B, j, H]: state after atom j was placed
        keys = self.key_lin(mem).unsqueeze(1) + self._rem(rem_j)  # [B, t, j, H]
        scores = (q.unsqueeze(2) * keys).sum(-1) / q.shape[-1] ** 0.5
        has_parent = (idx[None, :] > 0) & mask
        scores = scores.masked_fill(~(lower & mask.unsqueeze(1)), float("-inf"))
        scores = torch.where(has_parent.unsqueeze(-1), scores, torch.zeros_like(scores))
        parent_nll = F.cross_entropy(scores.transpose(1, 2), torch.where(has_parent, parent, -100),
                                     reduction="none").sum(1)
        gather = parent.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, 1, q.shape[-1])
        mem_p = mem.unsqueeze(1).expand(-1, n, -1, -1).gather(2, gather).squeeze(2)
        rem_p = rem_j.gather(2, parent.unsqueeze(-1)).squeeze(-1)
        pb_logits = self.parent_bond_head(torch.cat([q, mem_p, self._rem(rem_p)], -1))
        pb_nll = F.cross_entropy(pb_logits.transpose(1, 2), torch.where(has_parent, parent_bond - 1, -100),
                                 reduction="none").sum(1)
        ring_in = torch.cat([q.unsqueeze(2).expand(-1, -1, n, -1), mem.unsqueeze(1).expand(-1, n, -1, -1),
                             self._rem(rem_j), self._rem(rem_t)], -1)
        ring_target = torch.where(ring_mask, bonds, -100)
        ring_nll = F.cross_entropy(self.ring_head(ring_in).permute(0, 3, 1, 2), ring_target,
                                   reduction="none").sum((1, 2))
        return atom_nll + parent_nll + pb_nll + ring_nll

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Loss terms of a PyG batch: recon and kl per molecule (means), the annealed, free-bits training loss, and
        `selection` = recon + beta_max * free-bits KL, the objective after the warm-up (no input dropout in eval
        mode): the validation criterion, it does not move with the annealed beta, so validations at any step
        compare."""
        tokens, mask, bonds = self.dense(batch)
        mu, logvar = self.encode(batch)
        step = int(self.steps)
        dropped = None
        if self.training:
            self.steps += 1
            if self.in_dropped is not None:
                dropped = hashed_uniform(batch.idx, step, tokens.shape[1] + 1, DROPOUT_SALT) < self.input_dropout
                dropped[:, 0] = False  # the start step carries no teacher-forced atom
        eps = hashed_normal(batch.idx, step if self.training else -1, self.latent).to(mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = self.reconstruction_loss(z, tokens, mask, bonds, dropped)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # [B, latent]
        kl_term = kl_dims.clamp(min=self.free_bits).sum(-1)  # free bits per molecule and dimension
        beta = self.beta_max * min(1.0, step / max(self.kl_anneal_steps, 1))
        kl = kl_dims.sum(-1).mean()
        return {"recon": recon.mean(), "kl": kl, "kl_term": kl_term.mean(), "beta": torch.tensor(beta),
                "loss": recon.mean() + beta * kl_term.mean(),
                "selection": recon.mean() + self.beta_max * kl_term.mean()}

    # -- decoder (generation) --------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: torch.Tensor, *, constrained: bool = True, greedy: bool = False,
               generator: torch.Generator | None = None, temperature: float = 1.0) -> Decoded:
        """Build molecules atom by atom; `constrained` masks every choice that would exceed an atom's valence."""
        b, dev = z.shape[0], z.device
        n_max = self.max_atoms
        big = torch.finfo(z.dtype).min

        def choose(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            logits = logits.masked_fill(~allowed, big)
            if greedy:
                return logits.argmax(-1)
            probs = torch.softmax(logits / temperature, -1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

        tokens = torch.zeros(b, n_max, dtype=torch.long, device=dev)
        bonds = torch.zeros(b, n_max, n_max, dtype=torch.long, device=dev)
        used = torch.zeros(b, n_max, dtype=torch.long, device=dev)
        alive = torch.ones(b, dtype=torch.bool, device=dev)
        count = torch.zeros(b, dtype=torch.long, device=dev)
        h = torch.tanh(self.z_to_h(z)).unsqueeze(0)
        prev_tok = torch.full((b,), self.num_tokens, dtype=torch.long, device=dev)
        prev_pb = torch.zeros(b, dtype=torch.long, device=dev)
        prev_rings = torch.zeros(b, dtype=torch.long, device=dev)
        mems: list[torch.Tensor] = []
        ar = torch.arange(b, device=dev)
        for t in range(n_max + 1):
            out, h = self.gru(self._step_input(prev_tok, prev_pb, prev_rings, z).unsqueeze(1), h)
            hs = out[:, 0]
            if t > 0:  # the state after atom t-1 was placed is its memory
                mems.append(hs + self.m_emb(tokens[:, t - 1]))
            if t == n_max:
                break
            allowed = torch.ones(b, self.num_tokens + 1, dtype=torch.bool, device=dev)
            if constrained or t == 0:
                allowed[:, self.stop] = t > 0
            if constrained and t > 0:
                open_atoms = ((self.max_valence[tokens[:, :t]] - used[:, :t]) >= 1) & (torch.arange(t, device=dev) <
                                                                                      count[:, None])
                allowed[~open_atoms.any(1), : self.num_tokens] = False
                allowed[~open_atoms.any(1), self.stop] = True
            tok = choose(self.atom_head(hs), allowed)
            stopping = alive & (tok == self.stop)
            alive = alive & ~stopping
            tok = torch.where(alive, tok, torch.zeros_like(tok))
            tokens[:, t] = tok
            prev_tok, prev_pb, prev_rings = tok, torch.zeros_like(tok), torch.zeros_like(tok)
            if t == 0:
                count = count + alive.long()
                continue
            mem = torch.stack(mems, 1)  # [B, t, H]
            q = self.q_lin(hs + self.q_emb(tok))
            rem = self.max_valence[tokens[:, :t]] - used[:, :t]
            keys = self.key_lin(mem) + self._rem(rem)
            scores = (q.unsqueeze(1) * keys).sum(-1) / q.shape[-1] ** 0.5
            ok = rem >= 1 if constrained else torch.ones_like(rem, dtype=torch.bool)
            ok = ok | ~ok.any(1, keepdim=True)  # rows that cannot continue are dead: any choice
            parent = choose(scores, ok)
            rem_p = rem[ar, parent]
            maxv_t = self.max_valence[tok]
            pb_logits = self.parent_bond_head(torch.cat([q, mem[ar, parent], self._rem(rem_p)], -1))
            orders = torch.arange(1, 4, device=dev)
            pb_ok = orders[None, :] <= torch.minimum(maxv_t, rem_p)[:, None] if constrained else \
                torch.ones(b, 3, dtype=torch.bool, device=dev)
            pb_ok = pb_ok | ~pb_ok.any(1, keepdim=True)
            pb = choose(pb_logits, pb_ok) + 1
            pb = torch.where(alive, pb, torch.zeros_like(pb))
            bonds[ar, t, parent] = pb
            bonds[ar, parent, t] = pb
            used[ar, t] += pb
            used[ar, parent] += pb
            rings = torch.zeros_like(tok)
            for j in range(t):
                cand = alive & (j > parent)
                if not bool(cand.any()):
                    continue
                rem_j = self.max_valence[tokens[:, j]] - used[:, j]
                rem_t = maxv_t - used[:, t]
                logits = self.ring_head(torch.cat([q, mem[:, j], self._rem(rem_j), self._rem(rem_t)], -1))
                classes = torch.arange(BOND_CLASSES, device=dev)
                r_ok = classes[None, :] <= torch.minimum(rem_j, rem_t).clamp(min=0)[:, None] if constrained else \
                    torch.ones(b, BOND_CLASSES, dtype=torch.bool, device=dev)
                r = torch.where(cand, choose(logits, r_ok), torch.zeros_like(tok))
                bonds[:, t, j] = torch.where(cand, r, bonds[:, t, j])  # never overwrite the parent bond
                bonds[:, j, t] = bonds[:, t, j]
                used[:, t] += r
                used[:, j] += r
                rings += (r > 0).long()
            prev_pb, prev_rings = pb, rings
            count = count + alive.long()
        out_tokens, out_bonds = [], []
        for i in range(b):
            k = int(count[i])
            out_tokens.append(tokens[i, :k].tolist())
            nz = torch.nonzero(torch.triu(bonds[i, :k, :k], 1))
            out_bonds.append([(int(a), int(c), int(bonds[i, a, c])) for a, c in nz])
        return Decoded(out_tokens, out_bonds)
