"""The decoder as a plain module: shapes, causality, parameter and FLOP counts, meta-device init."""

from __future__ import annotations

import pytest
import torch

from trainer.models.transformer import Transformer, TransformerArgs

ARGS = TransformerArgs(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def test_parameter_count_matches_the_module() -> None:
    for tie in (False, True):
        args = TransformerArgs(**{**ARGS.__dict__, "tie_embeddings": tie})
        model = Transformer(args)
        assert sum(p.numel() for p in model.parameters()) == args.num_params()
    assert TransformerArgs(32000, 4352, 56, 64, 8, ffn_dim=14336).num_params() == 13_147_013_376


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(ARGS).eval()
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 97
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_residual_projections_get_scaled_init() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerArgs(vocab_size=97, dim=256, n_layers=8, n_heads=4, max_seq_len=16))
    block = model.layers[0]
    assert block.attention.wqkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.feed_forward.w2.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_meta_init_then_materialize_gives_a_working_model() -> None:
    with torch.device("meta"):
        model = Transformer(ARGS)
    model.to_empty(device="cpu")
    model.init_weights()
    out = model(torch.randint(0, 97, (1, 16)))
    assert out.shape == (1, 16, 97) and torch.isfinite(out).all()


def test_bad_shapes_and_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        TransformerArgs(vocab_size=10, dim=32, n_layers=1, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        Transformer(ARGS)(torch.zeros(1, 17, dtype=torch.long))


def test_flash_attention_is_import_guarded() -> None:
    from trainer.models.transformer import flash_attn_available

    if flash_attn_available():
        pytest.skip("flash-attn is installed here")
    model = Transformer(TransformerArgs(**{**ARGS.__dict__, "attention": "flash"}))
    with pytest.raises(RuntimeError, match="flash-attn is not installed"):
        model(torch.zeros(1, 4, dtype=torch.long))
