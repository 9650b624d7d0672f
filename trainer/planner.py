"""Memory plan of a decoder training run: every term per GPU and per host, for each strategy, summed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from trainer.models.transformer import TransformerArgs

GiB = 1024**3
Checkpointing = Literal["none", "selective", "full"]
Finetune = Literal["full", "lora", "qlora"]
Optimizer = Literal["adamw", "adamw8bit"]

CUDA_CONTEXT = int(0.5 * GiB)  # CUDA context + cuBLAS/NCCL workspaces: outside torch's allocator
FRAGMENTATION = 0.10  # caching-allocator slack on top of what torch allocates at peak
PROCESS_BASELINE = 3 * GiB  # host RSS of one rank: Python, torch, CUDA libraries
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, 8-bit absmax per 64, fp32 per 256 absmax (double quant)
DS_BUCKET = 50_000_000  # DeepSpeed reduce/allgather bucket elements, written into the generated config
LORA_TARGETS = ("wqkv", "wo", "w13", "w2")


@dataclass(frozen=True)
class Workload:
    """What one training step holds: model shape, batch, optimizer, checkpointing, fine-tuning mode."""

    args: TransformerArgs
    seq_len: int
    micro_batch: int
    grad_accum: int = 1
    optimizer: Optimizer = "adamw"
    checkpointing: Checkpointing = "none"
    finetune: Finetune = "full"
    lora_rank: int = 16
    device: Literal["cuda", "cpu"] = "cuda"


@dataclass(frozen=True)
class Strategy:
    """A way to spread the model over GPUs; fields that do not apply to `name` are ignored."""

    name: Literal["none", "ddp", "fsdp", "deepspeed"]
    reshard_after_forward: bool = True
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def label(self) -> str:
        if self.name == "fsdp":
            return f"fsdp ({'ZeRO-3' if self.reshard_after_forward else 'ZeRO-2'})"
        if self.name == "deepspeed":
            offload = [k for k, on in (("opt", self.offload_optimizer), ("params", self.offload_params)) if on]
            return f"deepspeed ZeRO-{self.zero_stage}" + (f" + offload {'+'.join(offload)}" if offload else "")
        return self.name


@dataclass(frozen=True)
class Hardware:
    """GPUs of the job and the host they sit on (one host unless gpus_per_host says otherwise)."""

    gpus: int
    gpu_mem: int
    host_mem: int | None = None
    gpus_per_host: int | None = None

    @property
    def per_host(self) -> int:
        return self.gpus_per_host or self.gpus


@dataclass
class Plan:
    """Per-GPU terms (bytes, at the step's peak), per-host terms, and the verdict."""

    workload: Workload
    strategy: Strategy
    gpu: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    peak_allocated: int = 0
    gpu_total: int = 0
    host_total: int = 0
    fits: bool = False
    reason: str = ""


def param_counts(w: Workload) -> tuple[int, int, int]:
    """(model parameters, trainable parameters (adapters come on top), parameters of the block linears)."""
    a = w.args
    total = a.num_params()
    linear = a.n_layers * (a.layer_params() - 2 * a.dim)
    if w.finetune == "full":
        return total, total, linear
    return total, lora_params(a, w.lora_rank), linear


def lora_params(a: TransformerArgs, rank: int) -> int:
    """Adapter parameters for rank r on every block linear: r x (in + out) each."""
    q_out = (a.n_heads + 2 * a.kv_heads) * a.head_dim
    shapes = ((a.dim, q_out), (a.n_heads * a.head_dim, a.dim), (a.dim, 2 * a.hidden_dim), (a.hidden_dim, a.dim))
    return a.n_layers * sum(rank * (i + o) for i, o in shapes)


def layer_activation_bytes(w: Workload, resid_bytes: int) -> int:
    """Bytes one block saves for backward per token (bf16 compute), counted from transformer.py.

    Per token: two RMSNorm inputs (the residual dtype on CUDA's fused kernel; fp32 input and fp32
    normalised output on CPU), qkv input 2d, qkv output 2(d + 2kv), rotated q 2d and k 2kv, attention
    output 2d and its log-sum-exp 4h, MLP input 2d, gate/up output 4f, silu output 2f, down input 2f.
    Measured on an H100 within 0.5% (docs/memory.md). SDPA's flash kernel pads odd head sizes (68 for
    the 13B shape) and still keeps only output and log-sum-exp.
    """
    a = w.args
    d, kv, f, h = a.dim, a.kv_heads * a.head_dim, a.hidden_dim, a.n_heads
    norms = 2 * (resid_bytes * d if w.device == "cuda" else 8 * d + 4)
    per_token = norms + 10 * d + 6 * kv + 8 * f + 4 * h
    if w.finetune != "full":
        per_token += 2 * w.lora_rank * len(LORA_TARGETS)
    return per_token


def recomputed_blocks(w: Workload) -> int:
    """Blocks whose activations are recomputed in backward (parallelize.apply_activation_checkpointing)."""
    return {"none": 0, "selective": w.args.n_layers // 2, "full": w.args.n_layers}[w.checkpointing]


def activation_bytes(w: Workload, resid_bytes: int) -> int:
    """Activations kept from forward to backward: full blocks, block inputs of recomputed ones, the head."""
    a, tokens = w.args, w.micro_batch * w.seq_len
    recomputed = recomputed_blocks(w)
    stored = (a.n_layers - recomputed) * layer_activation_bytes(w, resid_bytes) + recomputed * resid_bytes * a.dim
    head = (resid_bytes * a.dim if w.device == "cuda" else 8 * a.dim + 4) + 2 * a.dim
    return tokens * (stored + head)


def logits_bytes(w: Workload) -> int:
    """Loss peak at the start of backward: bf16 logits 2 + fp32 log-softmax 4 + its gradient 4 B/logit.

    While the loss is computed (autocast still on) the peak is 2 B/logit less. CPU keeps 2 B/logit
    more (both measured, docs/memory.md).
    """
    return (10 if w.device == "cuda" else 12) * w.micro_batch * w.seq_len * w.args.vocab_size


def plan(w: Workload, s: Strategy, hw: Hardware) -> Plan:
    """Every memory term of one strategy, per GPU and per host, and the verdict."""
    a = w.args
    total, trainable, linear = param_counts(w)
    frozen = 0 if w.finetune == "full" else total
    g = hw.gpus if s.name != "none" else 1
    unit = a.layer_params()
    root = a.vocab_size * a.dim * (1 if a.tie_embeddings else 2)
    opt_bytes = 8 if w.optimizer == "adamw" else 2
    gpu: dict[str, int] = {}
    host: dict[str, int] = {"process baseline": PROCESS_BASELINE * hw.per_host}

    quantized = int(NF4_BYTES * linear) + 2 * (frozen - linear)
    base = quantized if w.finetune == "qlora" else 2 * frozen
    mixed_fp32 = w.finetune == "full" and s.name in ("none", "ddp")
    resid = 4 if mixed_fp32 else 2

    if s.name in ("none", "ddp"):
        gpu["parameters"] = base + 4 * trainable
        gpu["autocast bf16 weight copies"] = 2 * linear + (2 * a.vocab_size * a.dim) if mixed_fp32 else 0
        gpu["gradients"] = 4 * trainable
        gpu["optimizer state"] = opt_bytes * trainable
    elif s.name == "fsdp":
        gpu["parameters"] = math.ceil((base + 4 * trainable) / g)
        gathered = 2 * total if not s.reshard_after_forward else 2 * (2 * unit) + 2 * root
        gpu["gathered units (bf16)"] = gathered
        gpu["gradients"] = math.ceil(4 * trainable / g)
        gpu["optimizer state"] = math.ceil(opt_bytes * trainable / g)
        gpu["reduce-scatter buffers"] = (2 + 4) * (unit if w.finetune == "full" else lora_params(a, w.lora_rank))
    else:
        stage = s.zero_stage
        params16 = 2 * total
        gpu["parameters"] = 0 if s.offload_params else (params16 // g if stage == 3 else params16)
        gpu["gathered units (bf16)"] = 2 * (2 * unit) if stage == 3 else 0
        master = (4 + opt_bytes) * trainable // g
        if s.offload_optimizer:
            gpu["gradients"] = 0
            gpu["optimizer state"] = 0
            host["offloaded fp32 master + optimizer + grads"] = (8 + opt_bytes) * trainable * hw.per_host // g
        else:
            gpu["gradients"] = 2 * trainable if stage == 1 else 2 * trainable // g
            gpu["optimizer state"] = master
        if s.offload_params:
            host["offloaded bf16 parameters"] = params16 * hw.per_host // g
        gpu["reduce/allgather buckets"] = 3 * 2 * DS_BUCKET

    gpu["activations"] = activation_bytes(w, resid)
    recomputed = recomputed_blocks(w)
    if recomputed:
        tokens = w.micro_batch * w.seq_len
        gpu["recompute (one block)"] = tokens * layer_activation_bytes(w, resid)
    gpu["logits + loss"] = logits_bytes(w)
    if w.finetune == "qlora":
        gpu["dequantized weight (one linear)"] = 2 * a.dim * 2 * a.hidden_dim
    return _finish(Plan(w, s, gpu, host), hw)


def _finish(p: Plan, hw: Hardware) -> Plan:
    """Peak = state + the largest phase (loss, backward start, optimizer step); add context, margin; decide.

    Loss phase: every autocast weight copy is cached until autocast exits; logits 2 B each below their peak.
    Backward start: copies of recomputed blocks are gone; logits at their peak, or one block recomputed.
    Step: gradients (when they are not already resident).
    """
    t, w = p.gpu, p.workload
    grads = t.get("gradients", 0)
    resident_grads = w.grad_accum > 1 or p.strategy.name == "ddp"
    state = t["parameters"] + t["optimizer state"] + (grads if resident_grads else 0)
    common = sum(t.get(k, 0) for k in ("gathered units (bf16)", "reduce-scatter buffers",
                                        "reduce/allgather buckets", "dequantized weight (one linear)"))
    copies = t.get("autocast bf16 weight copies", 0)
    head_copies = 2 * w.args.vocab_size * w.args.dim if copies else 0
    n_layers, recomputed = w.args.n_layers, recomputed_blocks(w)
    block_copies = (copies - head_copies) // n_layers
    kept_copies = head_copies + block_copies * (n_layers - recomputed)
    recompute = t.get("recompute (one block)", 0) + (block_copies if recomputed else 0)
    loss_phase = copies + t["activations"] + t["logits + loss"] - 2 * w.micro_batch * w.seq_len * w.args.vocab_size
    backward = kept_copies + t["activations"] + max(t["logits + loss"], recompute)
    step = 0 if resident_grads else grads
    p.peak_allocated = state + max(common + loss_phase, common + backward, step)
    t["CUDA context"] = CUDA_CONTEXT
    t["fragmentation margin"] = int(FRAGMENTATION * p.peak_allocated)
    p.gpu_total = p.peak_allocated + CUDA_CONTEXT + t["fragmentation margin"]
    p.host_total = sum(p.host.values())
    p.reason = _refusal(w, p.strategy)
    if p.reason:
        return p
    if p.gpu_total > hw.gpu_mem:
        p.reason = f"needs {p.gpu_total / GiB:.1f} GiB per GPU > {hw.gpu_mem / GiB:.1f} GiB"
    elif hw.host_mem is not None and p.host_total > hw.host_mem:
        p.reason = f"needs {p.host_total / GiB:.1f} GiB host > {hw.host_mem / GiB:.1f} GiB"
    else:
        p.fits, p.reason = True, "fits"
    return p


def _refusal(w: Workload, s: Strategy) -> str:
    """Why a combination is refused outright, or "" (the same rules as parallelize.check_spec)."""
    if w.optimizer == "adamw8bit" and s.name in ("fsdp", "deepspeed"):
        return f"refused: 8-bit AdamW needs whole tensors; {s.name} shards or owns the optimizer"
    if w.finetune == "qlora" and s.name in ("fsdp", "deepspeed"):
        return "refused: QLoRA runs with none or ddp here (4-bit base weights are not sharded)"
    return ""


def strategies(gpus: int) -> list[Strategy]:
    """Candidates from the fastest (least communication and offload) to the slowest."""
    cands = [Strategy("none")] if gpus == 1 else [Strategy("ddp")]
    cands += [Strategy("fsdp", reshard_after_forward=False), Strategy("fsdp"),
              Strategy("deepspeed", zero_stage=1), Strategy("deepspeed", zero_stage=2),
              Strategy("deepspeed", zero_stage=3),
              Strategy("deepspeed", zero_stage=2, offload_optimizer=True),
              Strategy("deepspeed", zero_stage=3, offload_optimizer=True),
              Strategy("deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True)]
    return cands


def cheapest(w: Workload, hw: Hardware) -> Plan | None:
    """First fitting plan over strategy x checkpointing x optimizer, ordered by expected slowdown."""
    for strategy in strategies(hw.gpus):
        for ckpt in ("none", "selective", "full"):
            for opt in ("adamw", "adamw8bit"):
                p = plan(replace(w, checkpointing=ckpt, optimizer=opt), strategy, hw)
                if p.fits:
                    return p
    return None


def format_plan(plans: list[Plan], hw: Hardware) -> str:
    """A table of terms (GiB) per strategy, the verdicts, and the cheapest fitting configuration."""
    names: list[str] = []
    for p in plans:
        names += [k for k in p.gpu if k not in names]
    host_names: list[str] = []
    for p in plans:
        host_names += [k for k in p.host if k not in host_names]
    width = max(len(n) for n in [*names, *host_names, "per-GPU total"]) + 2
    cols = [p.strategy.label for p in plans]
    lines = ["per GPU (GiB)".ljust(width) + "".join(c.rjust(34) for c in cols)]
    for n in names:
        lines.append(n.ljust(width) + "".join(f"{p.gpu.get(n, 0) / GiB:34.2f}" for p in plans))
    lines.append("per-GPU total".ljust(width) + "".join(f"{p.gpu_total / GiB:34.2f}" for p in plans))
    lines.append(f"per host of {hw.per_host} GPU(s) (GiB)")
    for n in host_names:
        lines.append(n.ljust(width) + "".join(f"{p.host.get(n, 0) / GiB:34.2f}" for p in plans))
    lines.append("per-host total".ljust(width) + "".join(f"{p.host_total / GiB:34.2f}" for p in plans))
    lines.append("")
    lines += [f"{p.strategy.label}: {p.reason}" for p in plans]
    return "\n".join(lines)
