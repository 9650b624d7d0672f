"""DeepSpeed ZeRO under the shared loop: the engine owns backward, clipping, the step and its checkpoint files.

DeepSpeed writes its checkpoints with torch.save; they are read back here with `weights_only=True` (and an
allow-list of DeepSpeed's own plain record types), never by unpickling arbitrary objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datajobs.errors import require
from trainer.config import RunConfig
from trainer.distributed import DistEnv
from trainer.optim import lr_factor
from trainer.parallelize import ParallelSpec, apply_deepspeed, deepspeed_config

TAG = "ds"


def _weights_only_engine(base: type) -> type:
    class WeightsOnlyCheckpointEngine(base):
        """DeepSpeed's torch checkpoint engine, loading with weights_only=True."""

        def load(self, path: str, map_location=None):
            return torch.load(path, map_location=map_location, weights_only=True)

    return WeightsOnlyCheckpointEngine


def _allow_deepspeed_records() -> None:
    """Let weights_only loading rebuild the few plain records DeepSpeed stores beside tensors."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    torch.serialization.add_safe_globals([fragment_address, ZeroStageEnum, LossScaler])


def build(model: nn.Module, cfg: RunConfig, spec: ParallelSpec, env: DistEnv) -> Any:
    """A DeepSpeed engine from our config (ZeRO stage, offload, clipping, bf16, our LR schedule)."""
    device = env.device
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))  # DeepSpeed insists, even on one process
    require("deepspeed", "deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    ds_config = deepspeed_config(
        spec, micro_batch=cfg.data.batch_size, grad_accum=cfg.train.grad_accum_steps, lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps,
        grad_clip=cfg.train.clip_grad_norm or 0.0, bf16=cfg.train.precision == "bf16",
        torch_adam=device.type == "cpu", overlap_comm=device.type == "cuda",
    )

    def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg.schedule, cfg.train.max_steps))

    engine = apply_deepspeed(model.to(device), ds_config, lr_scheduler=schedule)
    engine.checkpoint_engine = _weights_only_engine(TorchCheckpointEngine)(config_params=None)
    _allow_deepspeed_records()
    return engine


def is_engine(model: Any) -> bool:
    return hasattr(model, "backward") and hasattr(model, "save_checkpoint")


def save(engine: Any, folder: Path) -> None:
    """Every rank writes its ZeRO partitions into `folder/ds` (collective)."""
    engine.save_checkpoint(str(folder), tag=TAG, save_latest=False)


def load(engine: Any, folder: Path) -> None:
    path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_optimizer_states=True,
                                     load_lr_scheduler_states=True)
    if path is None:
        from datajobs.errors import DataError

        raise DataError(f"{folder}/{TAG} holds no DeepSpeed checkpoint this engine can load")


def full_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU (gathered from ZeRO-3 partitions; collective)."""
    if engine.zero_optimization_stage() == 3:
        weights = engine._zero3_consolidated_16bit_state_dict()
    else:
        weights = engine.module.state_dict()
    return {k: v.detach().cpu().clone() for k, v in (weights or {}).items()}  # views of ZeRO's flat buffer
