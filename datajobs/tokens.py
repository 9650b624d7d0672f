"""Byte-level BPE training (HF tokenizers) and packed token shards: npz files holding one 1-D `tokens` array."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from datajobs.store import Shard

EOS = "<|endoftext|>"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: identical tokens give identical bytes


def train_tokenizer(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer with `<|endoftext|>` as id 0, trained on `texts`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def split_of(doc_id: str, val_fraction: float) -> str:
    """`val` or `train`, from a stable hash of the document id (independent of order and run)."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return "val" if h < val_fraction else "train"


def pack(tok: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """All documents tokenized and concatenated, each followed by the EOS id."""
    eos = tok.token_to_id(EOS)
    dtype = np.uint16 if tok.get_vocab_size() < 2**16 else np.uint32
    parts = []
    for enc in tok.encode_batch(list(texts)):
        parts.append(np.asarray(enc.ids, dtype=dtype))
        parts.append(np.asarray([eos], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def npz_bytes(tokens: np.ndarray) -> bytes:
    """An .npz (readable with np.load) holding `tokens`, byte-identical for identical arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        info = zipfile.ZipInfo("tokens.npy", date_time=_EPOCH)
        with zf.open(info, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(tokens), allow_pickle=False)
    return buf.getvalue()


def token_shards(split: str, tokens: np.ndarray, per_shard: int) -> list[Shard]:
    """`<split>-00000.npz`, `<split>-00001.npz`, ... of at most `per_shard` tokens each."""
    starts = range(0, max(len(tokens), 1), per_shard)
    return [
        Shard(f"{split}-{i:05d}.npz", npz_bytes(tokens[s : s + per_shard]), rows=len(tokens[s : s + per_shard]))
        for i, s in enumerate(starts)
    ]
