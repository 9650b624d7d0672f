"""LLM on one GPU: tokens/s, MFU and peak memory per variant, and the planner's error; JSON to $OUT."""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainer.lora import apply_lora, quantize_block
from trainer.models.transformer import Transformer, TransformerArgs, rope_tables
from trainer.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp
from trainer.planner import GiB, Hardware, Strategy, Workload, layer_activation_bytes, plan

SHAPES = {
    "125m": TransformerArgs(32000, 768, 12, 12, max_seq_len=2048, tie_embeddings=True),
    "1b": TransformerArgs(32000, 2048, 16, 16, 8, ffn_dim=8192, max_seq_len=2048, tie_embeddings=True),
    "13b": TransformerArgs(32000, 4352, 56, 64, 8, ffn_dim=14336, max_seq_len=2048),
}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def build(args: TransformerArgs, finetune: str, lora_rank: int, dev: torch.device) -> nn.Module:
    """Full: fp32 model on the GPU. (Q)LoRA: materialize (and quantize) one block at a time, then adapters."""
    if finetune == "full":
        with dev:
            return Transformer(args)
    with torch.device("meta"):
        model = Transformer(args)
    std = args.init_std
    for block in model.layers:
        block.to_empty(device=dev)
        for m in block.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        block.to(torch.bfloat16)
        if finetune == "qlora":
            quantize_block(block, dev)
    for m in (model.tok_embeddings, model.output, model.norm):
        m.to_empty(device=dev)
    nn.init.normal_(model.tok_embeddings.weight, std=std)
    nn.init.normal_(model.output.weight, std=std)
    nn.init.ones_(model.norm.weight)
    model.tok_embeddings.to(torch.bfloat16)
    model.output.to(torch.bfloat16)
    model.norm.to(torch.bfloat16)
    model.rope = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta).to(dev)
    return apply_lora(model, lora_rank, 2 * lora_rank)


def run(name: str, shape: str, batch: int, seq: int, steps: int, *, backend: str | None = "flash",
        compile_: bool = False, optimizer: str = "adamw", ckpt: str = "none", finetune: str = "full",
        lora_rank: int = 16, warmup: int = 3, strategy: str = "none") -> dict:
    """Train `steps` steps on random tokens after `warmup`; time, peak memory, planner comparison.

    Memory left by earlier variants (collected first) is the baseline and is subtracted from the peak.
    """
    args = SHAPES[shape]
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = build(args, finetune, lora_rank, torch.device("cuda"))
    apply_activation_checkpointing(model, ckpt)
    if compile_:
        apply_compile(model)
    if strategy == "fsdp":
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29511")
            dist.init_process_group("nccl", rank=0, world_size=1)
        apply_fsdp(model, reshard_after_forward=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1), device="cuda")
    def step() -> float:
        # the backend choice must also hold in backward, where checkpointed blocks are recomputed
        with sdpa_kernel([BACKENDS[backend]]) if backend else nullcontext():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(tokens[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
                del logits
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t0 = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    phases = {k: v - baseline / GiB for k, v in phase_peaks(model, opt, params, tokens, backend).items()}
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    tok_s = batch * seq * steps / elapsed
    measured = torch.cuda.max_memory_allocated() - baseline
    w = Workload(args, seq, batch, optimizer=optimizer, checkpointing=ckpt, finetune=finetune, lora_rank=lora_rank,
                 compiled=compile_)
    p = plan(w, Strategy(strategy), Hardware(1, torch.cuda.get_device_properties(0).total_memory))
    return {
        "name": name, "shape": shape, "params": args.num_params(), "batch": batch, "seq": seq, "steps": steps,
        "backend": backend, "compile": compile_, "strategy": strategy, "baseline_gib": baseline / GiB,
        "optimizer": optimizer, "checkpointing": ckpt,
        "finetune": finetune, "warmup_s": round(warm_s, 2), "step_s": elapsed / steps,
        "tokens_per_s": tok_s, "mfu": args.flops_per_token(seq) * tok_s / peak_flops(), "last_loss": loss,
        "peak_allocated_gib": measured / GiB, "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB,
        "planned_gib": p.peak_allocated / GiB, "planner_error": p.peak_allocated / measured - 1,
        "planned_terms_gib": {k: round(v / GiB, 3) for k, v in p.gpu.items()}, "phases_gib": phases,
    }


def phase_peaks(model: nn.Module, opt: torch.optim.Optimizer, params: list, tokens: torch.Tensor,
                backend: str | None) -> dict[str, float]:
    """One instrumented step: allocated at the start, and the peak of forward, backward and optimizer step."""
    out: dict[str, float] = {}

    def mark(name: str) -> None:
        torch.cuda.synchronize()
        out[f"{name}_peak"] = torch.cuda.max_memory_allocated() / GiB
        out[f"{name}_end"] = torch.cuda.memory_allocated() / GiB
        torch.cuda.reset_peak_memory_stats()

    with sdpa_kernel([BACKENDS[backend]]) if backend else nullcontext():
        mark("start")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens[:, :-1])
            mark("forward")
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            del logits
            mark("loss")
        loss.backward()
        mark("backward")
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("step")
    return out


def saved_bytes_per_token(shape: str, seq: int) -> dict:
    """Bytes one block saves for backward per token (fp32 params, bf16 autocast) vs the planner.

    The measured figure includes the block's autocast bf16 weight copies, which the planner counts
    as a separate term; `weight_copies` is that term per token.
    """
    args = SHAPES[shape]
    block = Transformer(TransformerArgs(**{**args.__dict__, "n_layers": 1})).cuda()
    x = torch.randn(1, seq, args.dim, device="cuda", requires_grad=True)
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cuda", dtype=torch.bfloat16):
        block.layers[0](x, block.rope)
    w = Workload(args, seq, 1)
    return {"shape": shape, "seq": seq, "measured": sum(seen.values()) / seq,
            "planned": layer_activation_bytes(w, 4), "weight_copies": 2 * (args.layer_params() - 2 * args.dim) / seq}


def sdpa_support(head_dim: int) -> dict:
    """Which SDPA backends accept bf16 causal GQA attention at this head size."""
    q = torch.randn(1, 8, 256, head_dim, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(1, 2, 256, head_dim, device="cuda", dtype=torch.bfloat16)
    out = {}
    for name, b in BACKENDS.items():
        try:
            with sdpa_kernel([b]):
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
            out[name] = "ok"
        except RuntimeError as e:
            out[name] = str(e).splitlines()[0][:160]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--only", default="", help="comma-separated run names")
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args()
    out = Path(a.out) / "llm_gpu.json"
    free, total = torch.cuda.mem_get_info()
    result: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "total_gib": total / GiB, "context_gib": (total - free - torch.cuda.memory_reserved()) / GiB,
        "peak_bf16_flops": peak_flops(), "runs": [], "errors": {},
    }
    for hd in (128, 64, 68):
        result[f"sdpa_head_dim_{hd}"] = sdpa_support(hd)
    for shape, seq in (("1b", 2048), ("13b", 2048)):
        result[f"saved_{shape}"] = saved_bytes_per_token(shape, seq)
    s = a.steps
    plan_runs = [
        ("1b-flash", dict(shape="1b", batch=4, seq=2048, steps=s)),
        ("1b-cudnn", dict(shape="1b", batch=4, seq=2048, steps=s, backend="cudnn")),
        ("1b-fsdp1-ckpt", dict(shape="1b", batch=8, seq=2048, steps=s // 4, strategy="fsdp", ckpt="full")),
        ("1b-default", dict(shape="1b", batch=4, seq=2048, steps=s // 4, backend=None)),
        ("1b-compile-flash", dict(shape="1b", batch=4, seq=2048, steps=s, compile_=True)),
        ("1b-compile-cudnn", dict(shape="1b", batch=4, seq=2048, steps=s, compile_=True, backend="cudnn")),
        ("1b-compile-b8", dict(shape="1b", batch=8, seq=2048, steps=s // 2, compile_=True)),
        ("1b-compile-fsdp1", dict(shape="1b", batch=4, seq=2048, steps=s // 2, compile_=True, strategy="fsdp")),
        ("1b-compile-fsdp1-b8", dict(shape="1b", batch=8, seq=2048, steps=s // 2, compile_=True, strategy="fsdp")),
        ("1b-adamw8bit", dict(shape="1b", batch=4, seq=2048, steps=s // 4, optimizer="adamw8bit")),
        ("1b-b8-full-ckpt", dict(shape="1b", batch=8, seq=2048, steps=s // 4, ckpt="full")),
        ("1b-b8-selective", dict(shape="1b", batch=8, seq=2048, steps=s // 4, ckpt="selective")),
        ("125m-b16-1k", dict(shape="125m", batch=16, seq=1024, steps=s // 4)),
        ("125m-b4-1k", dict(shape="125m", batch=4, seq=1024, steps=s // 4)),
        ("13b-qlora", dict(shape="13b", batch=1, seq=2048, steps=3, finetune="qlora", ckpt="full", backend=None,
                           warmup=2)),
    ]
    only = set(filter(None, a.only.split(",")))
    for name, kw in plan_runs:
        if only and name not in only:
            continue
        try:
            r = run(name, **kw)
            result["runs"].append(r)
            print(f"{name:20s} tok/s {r['tokens_per_s']:10.0f} mfu {r['mfu']:.3f} peak {r['peak_allocated_gib']:6.2f}"
                  f" GiB planned {r['planned_gib']:6.2f} err {100 * r['planner_error']:+.1f}%", flush=True)
        except Exception as e:  # record and go on: one failing variant must not lose the others
            result["errors"][name] = traceback.format_exc()[-2000:]
            print(f"{name}: FAILED {e!r}"[:300], flush=True)
        torch.cuda.empty_cache()
        out.write_text(json.dumps(result, indent=1, default=lambda v: None if math.isnan(v) else v))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1)[:4000])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
