"""LoRA and QLoRA fine-tuning through peft: NF4 base, adapters and the merged weights for export."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from trainer.parallelize import blocks

LORA_TARGETS = ("wqkv", "wo", "w13", "w2")


def bnb_available() -> bool:
    """True when bitsandbytes can be imported (QLoRA and 8-bit AdamW need it)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantize_block(block: nn.Module, device: torch.device, compute_dtype: torch.dtype = torch.bfloat16) -> None:
    """Replace every nn.Linear inside block by a bitsandbytes NF4 Linear4bit (double quant) on device."""
    import bitsandbytes as bnb

    for parent in list(block.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False, compute_dtype=compute_dtype,
                                  quant_type="nf4", compress_statistics=True, device="meta")
            q.weight = bnb.nn.Params4bit(child.weight.data.to(compute_dtype), requires_grad=False,
                                         quant_type="nf4", compress_statistics=True)
            setattr(parent, name, q.to(device))


def quantize_nf4(model: nn.Module, device: torch.device, compute_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """NF4 block linears; embeddings, norms and head cast to compute_dtype; everything moved to device."""
    for block in blocks(model):
        quantize_block(block, device, compute_dtype)
    for param in model.parameters():
        if param.dtype.is_floating_point:
            param.data = param.data.to(device=device, dtype=compute_dtype)
    for buf in model.buffers():
        buf.data = buf.data.to(device)
    return model


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: tuple[str, ...] = LORA_TARGETS) -> nn.Module:
    """Freeze the base and add rank-r adapters (fp32) on the block linears named in targets."""
    from datajobs.errors import require

    peft = require("peft", "lora")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    return peft.get_peft_model(model, config)


def dequantized(layer: nn.Module) -> torch.Tensor:
    """Full-precision weight of a plain Linear or a bitsandbytes Linear4bit."""
    weight = layer.weight
    if getattr(weight, "quant_state", None) is not None:
        import bitsandbytes as bnb

        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    return weight.data


def merged_state_dict(peft_model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Base weights plus B @ A * scale for every adapter, under the plain model's names (tied head dropped)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    out: dict[str, torch.Tensor] = {}
    lora_names: list[str] = []
    for name, module in base.named_modules():
        if any(name.startswith(prefix + ".") for prefix in lora_names):
            continue
        if isinstance(module, LoraLayer):
            lora_names.append(name)
            weight = dequantized(module.get_base_layer()).to(torch.float32)
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).to(torch.float32)
            out[f"{name}.weight"] = weight.to(dtype).contiguous()
            continue
        for pname, param in module.named_parameters(recurse=False):
            out[f"{name}.{pname}" if name else pname] = dequantized(module).to(dtype).contiguous() \
                if pname == "weight" else param.data.to(dtype).contiguous()
    if getattr(getattr(base, "args", None), "tie_embeddings", False):
        out.pop("output.weight", None)
    return out


def export_merged(peft_model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the merged weights as one safetensors file; load it with trainer.bundle.load_weights."""
    from trainer.bundle import save_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(merged_state_dict(peft_model, dtype), path)
    return path
