"""LoRA/QLoRA through peft: only adapters train, and the merged safetensors export reloads exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.bundle import load_base, load_weights
from trainer.lora import (
    apply_lora,
    dequantized,
    export_merged,
    merged_state_dict,
    quantize_nf4,
)
from trainer.models.transformer import Transformer, TransformerArgs

ARGS = TransformerArgs(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def train_steps(model: torch.nn.Module, steps: int = 4) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, ARGS.vocab_size, (4, 33), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("tie", [False, True])
def test_lora_trains_only_adapters_and_the_merged_export_reloads(tmp_path: Path, tie: bool) -> None:
    torch.manual_seed(0)
    args = TransformerArgs(**{**ARGS.__dict__, "tie_embeddings": tie})
    base = Transformer(args)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, rank=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    train_steps(model)
    for name, value in base.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), f"{name} changed"
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    path = export_merged(model, tmp_path / "merged.safetensors")
    fresh = Transformer(args)
    load_weights(fresh, path)
    tokens = torch.randint(0, args.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(fresh(tokens), model(tokens), atol=1e-5)
        assert not torch.allclose(Transformer(args)(tokens), model(tokens), atol=1e-3)


def test_base_checkpoint_loads_from_a_safetensors_export(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    trained = Transformer(ARGS)
    save_file(trained.state_dict(), str(tmp_path / "base.safetensors"))
    fresh = Transformer(ARGS)
    load_base(fresh, tmp_path / "base.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values(),
                                                  strict=True))


def test_qlora_nf4_base_with_adapters_trains_and_merges() -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the gpu extra)")
    torch.manual_seed(0)
    model = Transformer(ARGS)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        quantize_nf4(model, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, NotImplementedError) as exc:  # a bitsandbytes build without this device's 4-bit kernels
        pytest.skip(f"bitsandbytes cannot quantize here: {exc}")
    model = apply_lora(model, rank=4, alpha=8)
    assert type(model.base_model.model.layers[0].attention.wqkv.base_layer).__name__ == "Linear4bit"
    with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
        train_steps(model, steps=2)
    merged = merged_state_dict(model)
    layer = model.base_model.model.layers[0].feed_forward.w2
    base = dequantized(layer.get_base_layer()).float()
    ref = reference["layers.0.feed_forward.w2.weight"]
    assert ((base - ref).norm() / ref.norm()).item() < 0.15  # NF4 error of a normal-distributed matrix
    delta = layer.get_delta_weight("default").float()
    assert delta.abs().sum() > 0
    assert torch.allclose(merged["layers.0.feed_forward.w2.weight"], base + delta, atol=1e-6)
