"""Apply a distribution strategy, activation checkpointing and torch.compile to a model, from config."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

Strategy = Literal["none", "ddp", "fsdp", "deepspeed"]
Checkpointing = Literal["none", "selective", "full"]


@dataclass(frozen=True)
class ParallelSpec:
    """The config fields that decide how a model is wrapped (read from the run config's sections)."""

    strategy: Strategy = "none"
    reshard_after_forward: bool = True
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    activation_checkpointing: Checkpointing = "none"
    compile: bool = False
    optimizer: str = "adamw"
    fsdp_param_dtype: str = "bfloat16"

    @classmethod
    def from_config(cls, cfg: Any) -> ParallelSpec:
        """Build from a RunConfig (distributed, train and optim sections); missing fields keep defaults."""
        dist, train = cfg.distributed, cfg.train
        fields = {
            "strategy": getattr(dist, "strategy", "none"),
            "reshard_after_forward": getattr(dist, "fsdp_reshard_after_forward", True),
            "zero_stage": getattr(dist, "zero_stage", 2),
            "offload_optimizer": getattr(dist, "offload_optimizer", False),
            "offload_params": getattr(dist, "offload_params", False),
            "activation_checkpointing": getattr(train, "activation_checkpointing", "none"),
            "compile": getattr(train, "compile", False),
            "optimizer": getattr(cfg.optim, "name", "adamw"),
            "fsdp_param_dtype": getattr(dist, "fsdp_param_dtype", "bfloat16"),
        }
        return cls(**fields)


def check_spec(spec: ParallelSpec) -> None:
    """Refuse combinations that cannot work, with one line saying why (ValueError)."""
    if spec.optimizer == "adamw8bit" and spec.strategy == "fsdp":
        raise ValueError("optim.name=adamw8bit cannot run with distributed.strategy=fsdp: bitsandbytes quantizes "
                         "whole tensors but FSDP2 hands the optimizer DTensor shards; use ddp, or adamw with fsdp")
    if spec.optimizer == "adamw8bit" and spec.strategy == "deepspeed":
        raise ValueError("optim.name=adamw8bit cannot run with distributed.strategy=deepspeed: DeepSpeed builds "
                         "and partitions its own AdamW from the generated config")
    if spec.offload_params and not (spec.strategy == "deepspeed" and spec.zero_stage == 3):
        raise ValueError("distributed.offload_params needs strategy=deepspeed with zero_stage=3")
    if spec.offload_optimizer and spec.strategy != "deepspeed":
        raise ValueError("distributed.offload_optimizer needs strategy=deepspeed")
    if spec.zero_stage not in (1, 2, 3):
        raise ValueError(f"distributed.zero_stage must be 1, 2 or 3, got {spec.zero_stage}")


def blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer's block list, also inside a peft wrapper."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return module
    raise ValueError("model has no `layers` ModuleList of blocks")


def apply_activation_checkpointing(model: nn.Module, mode: Checkpointing) -> None:
    """Recompute blocks in backward: every block (full) or every second one (selective). Names unchanged."""
    if mode == "none":
        return
    for i, block in enumerate(blocks(model)):
        if mode == "full" or i % 2 == 1:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def apply_compile(model: nn.Module) -> None:
    """torch.compile each block in place (parameter names unchanged; one compiled graph reused)."""
    for block in blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, reshard_after_forward: bool, param_dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """FSDP2: shard each block, then the root (embeddings, final norm, head); bf16 compute, fp32 reduce."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    layer_list = blocks(model)
    for i, block in enumerate(layer_list):
        last = i == len(layer_list) - 1  # its backward starts right after forward: keep it gathered
        fully_shard(block, mp_policy=mp, reshard_after_forward=reshard_after_forward and not last)
    fully_shard(model, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    return model


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP with gradients as bucket views (no second copy of the gradients)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def deepspeed_config(spec: ParallelSpec, *, micro_batch: int, grad_accum: int, lr: float,
                     weight_decay: float, betas: tuple[float, float], eps: float, grad_clip: float,
                     bf16: bool, torch_adam: bool = False, overlap_comm: bool = True) -> dict[str, Any]:
    """DeepSpeed's JSON config generated from ours (never hand-kept): ZeRO stage, offload, buckets.

    torch_adam uses torch.optim.AdamW instead of DeepSpeed's fused kernel (CPU without a JIT build);
    with offload_optimizer DeepSpeed always uses its CPUAdam. overlap_comm overlaps gradient reduction
    with backward on CUDA streams; turn it off on CPU, which has none.
    """
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "overlap_comm": overlap_comm,
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
        "allgather_bucket_size": 50_000_000,
    }
    if spec.zero_stage == 3:
        zero |= {"stage3_prefetch_bucket_size": 50_000_000, "stage3_max_live_parameters": 100_000_000,
                 "stage3_param_persistence_threshold": 100_000}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        # bf16 as torch autocast over fp32 weights (our precision contract), not DeepSpeed's bf16 weights,
        # which would need every input cast by hand.
        "torch_autocast": {"enabled": bf16, "dtype": "bfloat16"},
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": list(betas), "eps": eps,
                                                  "weight_decay": weight_decay, "torch_adam": torch_adam}},
        "zero_allow_untested_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def apply_deepspeed(model: nn.Module, ds_config: dict[str, Any], lr_scheduler: Any = None) -> Any:
    """A DeepSpeed engine (forward, engine.backward(loss), engine.step()) with its own AdamW."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()
                                                                          if p.requires_grad],
                                           config=ds_config, lr_scheduler=lr_scheduler)
    return engine


def parallelize(model: nn.Module, spec: ParallelSpec, device: torch.device) -> nn.Module:
    """Checkpointing, then compile, then the strategy (torchtitan's order).

    DeepSpeed owns backward, step and checkpoints: trainer.deepspeed_engine builds its engine instead.
    """
    check_spec(spec)
    if spec.strategy == "deepspeed":
        raise ValueError("strategy=deepspeed is built by trainer.deepspeed_engine.build, which owns the engine")
    apply_activation_checkpointing(model, spec.activation_checkpointing)
    if spec.compile:
        apply_compile(model)
    if not any(p.is_meta for p in model.parameters()):  # a meta model is sharded first, materialized after
        model = model.to(device)
    if spec.strategy == "fsdp":
        return apply_fsdp(model, spec.reshard_after_forward, getattr(torch, spec.fsdp_param_dtype))
    if spec.strategy == "ddp":
        return apply_ddp(model, device)
    return model


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, skip: bool = True) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter inside (non-final micro-steps); no-op if not skip."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    if skip and isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif skip and isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
