"""Component `llm`: a decoder language model on the `text` dataset (packed tokens + BPE tokenizer).

Next-token cross-entropy on non-overlapping windows of `seq_len + 1` tokens; perplexity on the held-out
split against a unigram baseline; tokens/s and MFU from the model shape; samples for the report.
Fine-tuning: LoRA (peft) or QLoRA (NF4 base, bitsandbytes) on top of a base checkpoint.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset

from datajobs.errors import ConfigError, DataError, require
from datajobs.store import DatasetVersion, Store
from trainer.components.base import (
    Component,
    ComponentData,
    ComponentState,
    ModelConfig,
    ReportSection,
    StepOutput,
)
from trainer.models.transformer import Transformer, TransformerArgs


class LLMModelConfig(ModelConfig):
    vocab_size: int | None = Field(None, gt=0, description="default: the dataset tokenizer's vocabulary")
    dim: int = Field(gt=0, description="hidden size")
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="grouped-query attention; default n_heads")
    ffn_dim: int | None = Field(None, gt=0, description="SwiGLU width; default 8/3 dim rounded to multiple_of")
    multiple_of: int = Field(256, gt=0)
    seq_len: int = Field(gt=1, description="training context in tokens (also the model's max length)")
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False
    attention: Literal["sdpa", "flash"] = Field("sdpa", description="flash needs the flash-attn package (CUDA)")
    init_std: float = Field(0.02, gt=0)
    finetune: Literal["full", "lora", "qlora"] = Field("full", description="qlora needs CUDA + bitsandbytes")
    base_checkpoint: str | None = Field(None, description=".safetensors export or DCP checkpoint folder")
    lora_rank: int = Field(16, gt=0)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    init_on_meta: bool = Field(False, description="fsdp: build on the meta device, each rank initialises its "
                               "shards (for 7B+; full training without base_checkpoint only)")
    sample_prompts: list[str] = Field(default_factory=lambda: ["The NASA Exoplanet Archive"],
                                      description="prompts sampled into the report")
    sample_tokens: int = Field(48, ge=0, description="new tokens per report sample")

    @model_validator(mode="after")
    def _check(self) -> LLMModelConfig:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_kv_heads and self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        return self

    def transformer_args(self, vocab_size: int) -> TransformerArgs:
        return TransformerArgs(
            vocab_size=self.vocab_size or vocab_size, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, ffn_dim=self.ffn_dim, multiple_of=self.multiple_of,
            max_seq_len=self.seq_len, rope_theta=self.rope_theta, norm_eps=self.norm_eps,
            tie_embeddings=self.tie_embeddings, attention=self.attention, init_std=self.init_std,
        )


class TokenWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens (input and shifted target) over a packed stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int) -> None:
        self.tokens = tokens
        self.seq_len = seq_len

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.seq_len
        return torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))


def read_tokens(version: DatasetVersion, split: str) -> np.ndarray:
    """The split's packed tokens, shards concatenated in order (each shard verified by the store)."""
    paths = sorted(p for p in version.shards(".npz") if p.startswith(f"{split}-"))
    if not paths:
        raise DataError(f"{version.ref} has no `{split}-*.npz` token shards; re-create it with "
                        f"`{version.fix_command}`")
    arrays = []
    for path in paths:
        with np.load(io.BytesIO(version.read_bytes(path)), allow_pickle=False) as npz:
            arrays.append(npz["tokens"])
    return np.concatenate(arrays)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats) of val tokens under add-one-smoothed train token frequencies."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val].mean())


class LLMComponent(Component):
    name = "llm"
    description = "decoder language model on the text dataset (RoPE, GQA, SwiGLU; LoRA/QLoRA; ddp/fsdp)"
    model_config_cls = LLMModelConfig
    needs = ("text",)

    def build_data(self, store: Store) -> ComponentData:
        tokenizers = require("tokenizers", "text")
        cfg: LLMModelConfig = self.model_cfg
        version = store.open(self.cfg.data.dataset)
        self.tokenizer = tokenizers.Tokenizer.from_str(version.read_bytes("tokenizer.json").decode())
        self.train_tokens = read_tokens(version, "train")
        self.val_tokens = read_tokens(version, "val")
        self.vocab = self.tokenizer.get_vocab_size()
        if cfg.vocab_size and cfg.vocab_size < self.vocab:
            raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {self.vocab}")
        train, val = TokenWindows(self.train_tokens, cfg.seq_len), TokenWindows(self.val_tokens, cfg.seq_len)
        if len(val) == 0:
            raise DataError(f"{version.ref}: the val split has {len(self.val_tokens)} tokens, fewer than one "
                            f"window of model.seq_len={cfg.seq_len} + 1")
        card = (f"{version.ref}: {len(self.train_tokens):,} train and {len(self.val_tokens):,} val tokens, "
                f"vocab {self.vocab}; windows of {cfg.seq_len} + 1 tokens: {len(train):,} train, {len(val):,} val.")
        return ComponentData(train=train, val=val, lineage={self.cfg.data.dataset: version.ref}, card=card)

    def init_on_meta(self) -> bool:
        cfg: LLMModelConfig = self.model_cfg
        return cfg.init_on_meta and cfg.finetune == "full" and not cfg.base_checkpoint

    def model_args(self) -> TransformerArgs:
        return self.model_cfg.transformer_args(self.vocab)

    def state(self) -> ComponentState:
        """The tokenizer (JSON text) and the model shape: what generate needs from a bundle."""
        return ComponentState({"tokenizer_json": self.tokenizer.to_str(), "vocab": self.vocab,
                               "model_args": asdict(self.model_args())})

    def load_state(self, state: ComponentState) -> None:
        tokenizers = require("tokenizers", "text")
        self.tokenizer = tokenizers.Tokenizer.from_str(state.meta["tokenizer_json"])
        self.vocab = int(state.meta["vocab"])
        self.frozen = True

    def build_model(self, data: ComponentData | None) -> nn.Module:
        cfg: LLMModelConfig = self.model_cfg
        model = Transformer(self.model_args())
        if cfg.base_checkpoint and not self.frozen:  # a bundle's weights already hold the base
            from trainer.bundle import load_base

            load_base(model, cfg.base_checkpoint)
        if cfg.finetune == "full":
            return model
        from trainer.lora import apply_lora, bnb_available, quantize_nf4

        if cfg.finetune == "qlora":
            if not (torch.cuda.is_available() and bnb_available()):
                raise ConfigError("model.finetune=qlora needs CUDA and bitsandbytes (pip install '.[gpu]')")
            model = quantize_nf4(model, torch.device("cuda", torch.cuda.current_device()))
        return apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)

    def training_step(self, model: nn.Module, batch: torch.Tensor) -> StepOutput:
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        return StepOutput(loss=loss, samples=batch.shape[0], tokens=batch.shape[0] * (batch.shape[1] - 1))

    def flops_per_sample(self, model: nn.Module) -> float | None:
        seq = self.model_cfg.seq_len
        return self.model_args().flops_per_token(seq) * seq

    @torch.no_grad()
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        from trainer.generate import generate_text

        cfg: LLMModelConfig = self.model_cfg
        model.eval()
        total, count = 0.0, 0
        for i in range(0, len(data.val), 8):
            batch = torch.stack([data.val[j] for j in range(i, min(i + 8, len(data.val)))]).to(device)
            total += float(self.training_step(model, batch).loss) * batch.shape[0]
            count += batch.shape[0]
        val_loss = total / count
        base = unigram_loss(self.train_tokens, self.val_tokens[1:], self.vocab)
        samples = [generate_text(model, self.tokenizer, p, cfg.sample_tokens, seed=0) for p in cfg.sample_prompts]
        table = "\n".join([
            "| | loss (nats/token) | perplexity |", "|---|---|---|",
            f"| model, held-out split | {val_loss:.4f} | {math.exp(val_loss):.2f} |",
            f"| unigram baseline (train frequencies) | {base:.4f} | {math.exp(base):.2f} |",
        ])
        text = "\n\n".join(f"**{p}**\n\n```text\n{s}\n```" for p, s in zip(cfg.sample_prompts, samples, strict=True))
        return [
            ReportSection("Held-out perplexity", table, {"val_loss": val_loss, "val_perplexity": math.exp(val_loss),
                                                          "unigram_loss": base}),
            ReportSection("Samples (temperature 0.8, top-k 50, seed 0)", text),
        ]
