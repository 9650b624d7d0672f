"""LoRA and QLoRA fine-tuning through peft: NF4 base, adapters, base loading and merged safetensors export."""

from __future__ import annotations

import argparse
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


def load_base(model: nn.Module, path: str | Path) -> None:
    """Load base weights: a .safetensors file (our export) or a DCP checkpoint folder (its `model` entry)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        load_weights(model, path)
        return
    import torch.distributed.checkpoint as dcp

    from trainer.checkpoint import WeightsOnlyLoadPlanner

    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path), planner=WeightsOnlyLoadPlanner())
    model.load_state_dict(state["model"])


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
    """Write the merged weights as one safetensors file; load it with load_weights."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in merged_state_dict(peft_model, dtype).items()}, str(path))
    return path


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a safetensors export into a plain Transformer; only a tied head may be absent from the file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"output.weight"} if getattr(getattr(model, "args", None), "tie_embeddings", False) else set()
    if unexpected or set(missing) - allowed:
        raise ValueError(f"{path}: missing {sorted(set(missing) - allowed)}, unexpected {sorted(unexpected)}")


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a trained llm run's weights (LoRA merged) as one safetensors file",
                              description="Load <run>/best (or the newest checkpoint); for a LoRA/QLoRA run merge "
                              "the adapters into the base (QLoRA: dequantized) and write plain Transformer weights.")
    p.add_argument("--run", required=True, type=Path, help="run folder (<logging.run_dir>/<run_name>)")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.generate import load_run

    model, _ = load_run(args.run, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if hasattr(model, "get_base_model"):
        path = export_merged(model, args.out)
    else:
        from safetensors.torch import save_file

        args.out.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.args, "tie_embeddings", False):
            state.pop("output.weight")
        save_file(state, str(args.out))
        path = args.out
    print(f"merged weights: {path}")
    return 0
