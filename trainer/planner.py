"""Memory plan of a decoder training run: every term per GPU and per host, for each strategy, summed."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

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
    compiled: bool = False


@dataclass(frozen=True)
class Strategy:
    """A way to spread the model over GPUs; fields that do not apply to `name` are ignored."""

    name: Literal["none", "ddp", "fsdp", "deepspeed"]
    reshard_after_forward: bool = True
    zero_stage: int = 3
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def short(self) -> str:
        """Column heading: ddp, fsdp-z2, ds-z3+oo (optimizer offload), ds-z3+oo+op (and parameters)."""
        if self.name == "fsdp":
            return "fsdp-z3" if self.reshard_after_forward else "fsdp-z2"
        if self.name == "deepspeed":
            return (f"ds-z{self.zero_stage}" + ("+oo" if self.offload_optimizer else "")
                    + ("+op" if self.offload_params else ""))
        return self.name

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
    the 13B shape) and still keeps only output and log-sum-exp. Under torch.compile the partitioner
    recomputes the SwiGLU product and the rotated query in backward: 2f + 2d fewer (fitted on the 1B
    shape, 4 configurations, on an H100).
    """
    a = w.args
    d, kv, f, h = a.dim, a.kv_heads * a.head_dim, a.hidden_dim, a.n_heads
    norms = 2 * (resid_bytes * d if w.device == "cuda" else 8 * d + 4)
    per_token = norms + 10 * d + 6 * kv + 8 * f + 4 * h
    if w.finetune != "full":
        per_token += 2 * w.lora_rank * len(LORA_TARGETS)
    if w.compiled and w.device == "cuda":
        per_token -= 2 * f + 2 * d
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
    """Terms (GiB) per strategy as a table, then one verdict line per strategy."""
    def rows(attr: str) -> list[str]:
        names: list[str] = []
        for p in plans:
            names += [k for k in getattr(p, attr) if k not in names]
        return names

    width = max(len(n) for n in [*rows("gpu"), *rows("host")]) + 2
    lines = ["per GPU, GiB".ljust(width) + "".join(f"{p.strategy.short:>12}" for p in plans)]
    for n in rows("gpu"):
        lines.append(n.ljust(width) + "".join(f"{p.gpu.get(n, 0) / GiB:12.2f}" for p in plans))
    lines.append("total per GPU".ljust(width) + "".join(f"{p.gpu_total / GiB:12.2f}" for p in plans))
    lines.append(f"per host ({hw.per_host} GPUs), GiB")
    for n in rows("host"):
        lines.append(n.ljust(width) + "".join(f"{p.host.get(n, 0) / GiB:12.2f}" for p in plans))
    lines.append("total per host".ljust(width) + "".join(f"{p.host_total / GiB:12.2f}" for p in plans))
    lines.append("")
    lines += [f"{p.strategy.short:>12}  {p.strategy.label}: {p.reason}" for p in plans]
    return "\n".join(lines)


def parse_size(text: str) -> int:
    """Bytes from '24GiB', '24GB', '80G', '512MiB' or a plain number of bytes."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
             "tb": 10**12, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "b": 1, "": 1}
    value = text.strip().lower()
    number = value.rstrip("kmgtib")
    unit = value[len(number):]
    if unit not in units or not number:
        raise ValueError(f"{text!r} is not a size (e.g. 24GiB, 80GB, 512MiB)")
    return int(float(number) * units[unit])


def workload_from_config(cfg: Any, vocab_default: int = 32000) -> Workload:
    """The llm component's workload from a RunConfig (model section, batch, accumulation, optimizer)."""
    from trainer.components.llm import LLMModelConfig

    model = LLMModelConfig.model_validate(cfg.model)
    optimizer = cfg.optim.name if cfg.optim.name in ("adamw", "adamw8bit") else "adamw"
    return Workload(model.transformer_args(model.vocab_size or vocab_default), seq_len=model.seq_len,
                    micro_batch=cfg.data.batch_size, grad_accum=cfg.train.grad_accum_steps, optimizer=optimizer,
                    checkpointing=cfg.train.activation_checkpointing, finetune=model.finetune,
                    lora_rank=model.lora_rank, compiled=cfg.train.compile)


def add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="memory per GPU and per host for each strategy, and the cheapest config that fits",
        description="Sum every memory term of an llm config (parameters, gradients, optimizer state, sharding, "
        "gathered units, activations, logits, buffers, CUDA context, fragmentation) per strategy.")
    p.add_argument("-c", "--config", required=True, help="llm run config YAML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--gpus", type=int, default=1, help="GPUs in the job (data-parallel size)")
    p.add_argument("--gpu-mem", default="80GiB", help="memory of one GPU, e.g. 24GiB")
    p.add_argument("--host-mem", default=None, help="memory of one host, e.g. 256GiB (checks offload)")
    p.add_argument("--gpus-per-host", type=int, default=None, help="default: all GPUs on one host")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from datajobs.errors import ConfigError
    from trainer.config import load_config

    cfg = load_config(args.config, args.set)
    if cfg.component != "llm":
        raise ConfigError(f"plan covers the llm component; {args.config} trains {cfg.component!r}")
    try:
        hw = Hardware(args.gpus, parse_size(args.gpu_mem), parse_size(args.host_mem) if args.host_mem else None,
                      args.gpus_per_host)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    w = workload_from_config(cfg)
    print(describe(w, hw))
    print()
    print(format_plan([plan(w, s, hw) for s in strategies(hw.gpus)], hw))
    print()
    best = cheapest(w, hw)
    if best is None:
        print("nothing fits: no strategy, checkpointing mode or optimizer brings this under the limits")
        if w.finetune == "full":
            q = cheapest(replace(w, finetune="qlora"), Hardware(1, hw.gpu_mem, hw.host_mem))
            if q is not None:
                print(f"QLoRA (model.finetune=qlora) fits one GPU: {q.gpu_total / GiB:.1f} GiB with "
                      f"checkpointing {q.workload.checkpointing}")
    else:
        print(f"cheapest that fits: {best.strategy.label}, activation_checkpointing={best.workload.checkpointing}, "
              f"optim.name={best.workload.optimizer}: {best.gpu_total / GiB:.1f} GiB per GPU, "
              f"{best.host_total / GiB:.1f} GiB per host")
    return 0


def describe(w: Workload, hw: Hardware) -> str:
    """A header: model size, trainable parameters, tokens per micro-batch, hardware."""
    total, trainable, _ = param_counts(w)
    return (f"model {total / 1e9:.2f}B parameters ({w.args.n_layers} layers, dim {w.args.dim}), "
            f"{w.finetune} fine-tune: {trainable / 1e6:.1f}M trainable; micro-batch {w.micro_batch} x "
            f"{w.seq_len} tokens, accumulation {w.grad_accum}, checkpointing {w.checkpointing}, "
            f"{w.optimizer}\nhardware: {hw.gpus} GPU(s) of {hw.gpu_mem / GiB:.1f} GiB, host "
            f"{'unknown' if hw.host_mem is None else f'{hw.host_mem / GiB:.0f} GiB'}")
