"""Decoder-only transformer (RoPE, grouped-query attention, RMSNorm, SwiGLU) as a plain nn.Module."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # flash-attn only exists in the CUDA image
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None

ATTENTION_KINDS = ("sdpa", "flash")


def flash_attn_available() -> bool:
    """True when the flash-attn package imported."""
    return flash_attn_func is not None


@dataclass(frozen=True)
class TransformerArgs:
    """Shape of the decoder; every size the planner and the FLOP count need comes from here."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    multiple_of: int = 256
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    attention: str = "sdpa"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU width: given, else 8/3 of dim rounded up to multiple_of (LLaMA rule)."""
        if self.ffn_dim:
            return self.ffn_dim
        hidden = int(8 * self.dim / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def layer_params(self) -> int:
        """Parameters of one block: fused qkv, output projection, fused gate/up, down, two norms."""
        qkv = self.dim * (self.n_heads + 2 * self.kv_heads) * self.head_dim
        wo = self.n_heads * self.head_dim * self.dim
        mlp = 3 * self.dim * self.hidden_dim
        return qkv + wo + mlp + 2 * self.dim

    def num_params(self) -> int:
        """All parameters, counting a tied embedding once."""
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        return embed + head + self.n_layers * self.layer_params() + self.dim

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 x non-embedding params + 12 L H d_head T (torchtitan's count)."""
        dense = self.num_params() - (0 if self.tie_embeddings else self.vocab_size * self.dim)
        return 6.0 * dense + 12.0 * self.n_layers * self.n_heads * self.head_dim * seq_len


def rope_tables(head_dim: int, seq_len: int, theta: float) -> torch.Tensor:
    """cos and sin of the rotary angles, stacked: shape (2, seq_len, head_dim // 2), float32."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), freqs)
    return torch.stack((angles.cos(), angles.sin()))


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim; x is (B, T, H, D)."""
    seq_len = x.shape[1]
    cos = rope[0, :seq_len, None, :].to(x.dtype)
    sin = rope[1, :seq_len, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with one fused qkv projection."""

    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = args.n_heads, args.kv_heads, args.head_dim
        self.kind = args.attention
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * args.kv_heads) * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        bsz, seq_len, _ = x.shape
        q_size, kv_size = self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split((q_size, kv_size, kv_size), dim=-1)
        q = apply_rope(q.view(bsz, seq_len, self.n_heads, self.head_dim), rope)
        k = apply_rope(k.view(bsz, seq_len, self.kv_heads, self.head_dim), rope)
        v = v.view(bsz, seq_len, self.kv_heads, self.head_dim)
        if self.kind == "flash":
            if flash_attn_func is None:
                raise RuntimeError("attention: flash was chosen but flash-attn is not installed")
            out = flash_attn_func(q, k, v, causal=True)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                is_causal=True, enable_gqa=self.kv_heads != self.n_heads,
            ).transpose(1, 2)
        return self.wo(out.reshape(bsz, seq_len, q_size))


class FeedForward(nn.Module):
    """SwiGLU MLP with the gate and up projections fused into one matmul."""

    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.w13 = nn.Linear(args.dim, 2 * args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    """Token ids (B, T) to next-token logits (B, T, V)."""

    def __init__(self, args: TransformerArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope", rope_tables(args.head_dim, args.max_seq_len, args.rope_theta),
                             persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std); residual output projections scaled by 1/sqrt(2 L) (GPT-2). Meta-safe."""
        args = self.args
        if self.rope.device.type != "meta":
            self.rope.copy_(rope_tables(args.head_dim, args.max_seq_len, args.rope_theta))
        residual_std = args.init_std / math.sqrt(2 * args.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                std = residual_std if name.endswith(("wo", "w2")) else args.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.args.max_seq_len:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds max_seq_len {self.args.max_seq_len}")
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, self.rope)
        return self.output(self.norm(h))
