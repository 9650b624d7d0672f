"""One interface for what differs between strategies: backward, accumulation, clipping, step, state, save, load.

`TorchEngine` covers a plain module, DDP and FSDP2 (gradients, clipping and the step by torch, checkpoints by
DCP); `DeepSpeedEngine` hands them to a DeepSpeed engine (trainer.deepspeed_engine). The loop and the
checkpointer call only this interface; `build_engine` is the one place that picks the strategy.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer import deepspeed_engine, parallelize
from trainer.config import RunConfig
from trainer.distributed import DistEnv
from trainer.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from torch.distributed.checkpoint.staging import AsyncStager

# torch.distributed.checkpoint (0.5-0.7 s to import) is imported where a checkpoint is written or read, not here:
# a run's start-up to its first step does not wait for it.

_NO_CONTEXT = contextlib.nullcontext()  # reusable: no allocation per micro-step


def storage_writer(folder: Path | str) -> Any:
    """DCP's writer for a checkpoint folder: None (DCP's own file writer, fsync per file) on a local disk; on an
    object store fsspec's writer without its per-file sync, which there falls back to `os.sync()` of the whole
    machine: an object is durable once its PUT completes, and the checkpointer hashes it back before the
    manifest (docs/contracts.md)."""
    location = str(folder)
    if "://" not in location:
        return None
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # what DCP picks for a URL

    return FsspecWriter(location, sync_files=False)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, gathered from shards where the strategy shards (collective)."""
    if deepspeed_engine.is_engine(model):
        return deepspeed_engine.full_state_dict(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class Engine(ABC):
    """A model with its optimizer and schedule, trained by one strategy."""

    model: Any  # what the component's training_step calls (a module, a DDP/FSDP module, a DeepSpeed engine)
    scheduler: Any
    saves_in_background = False  # True: save_in_background is implemented

    @abstractmethod
    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward and backward; gradients sync only when `last`."""

    @abstractmethod
    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Backward of one micro-batch's loss (averaged over the accumulation steps)."""

    @abstractmethod
    def grad_norm(self) -> torch.Tensor | None:
        """Clip and return the total gradient norm before the step; None when only the step knows it."""

    @abstractmethod
    def step(self) -> torch.Tensor | None:
        """Optimizer and schedule step, then zero the gradients; the gradient norm when known only now."""

    @abstractmethod
    def zero_grad(self) -> None: ...

    @abstractmethod
    def save(self, folder: Path, distributed: bool) -> None:
        """Write model and optimizer shards into `folder` (collective)."""

    def save_in_background(self, folder: Path, distributed: bool, group: Any, stager: AsyncStager) -> Future:
        """Copy model and optimizer state to CPU memory now, write the shards into `folder` in a background thread
        (collective over `group`, a process group of its own); the future resolves when every rank has written."""
        raise NotImplementedError(f"{type(self).__name__} writes its checkpoints synchronously")

    @abstractmethod
    def load(self, folder: Path, distributed: bool) -> None:
        """Restore model, optimizer (and the engine's own schedule state) from `folder` (collective)."""

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.model)


class TorchEngine(Engine):
    """A plain module, DDP or FSDP2 with a torch optimizer and LambdaLR schedule."""

    saves_in_background = True

    def __init__(self, model: nn.Module, cfg: RunConfig) -> None:
        self.model = model
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, cfg.train.max_steps)
        self.accum = cfg.train.grad_accum_steps
        self.max_norm = cfg.train.clip_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]  # walked once, not every step

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        return _NO_CONTEXT if last else parallelize.no_grad_sync(self.model)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        (loss / self.accum).backward()

    def grad_norm(self) -> torch.Tensor:
        """Total gradient norm (clipping when train.clip_grad_norm is set); works for DDP and FSDP2 DTensors."""
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return torch.zeros(())
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm if self.max_norm is not None else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return norm

    def step(self) -> None:
        self.optimizer.step()
        self.scheduler.step()
        self.zero_grad()
        return None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, distributed: bool) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder),
                 storage_writer=storage_writer(folder), no_dist=not distributed)

    def save_in_background(self, folder: Path, distributed: bool, group: Any, stager: AsyncStager) -> Future:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return dcp.async_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder), process_group=group,
                              storage_writer=storage_writer(folder), async_stager=stager, no_dist=not distributed)

    def load(self, folder: Path, distributed: bool) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from trainer.dcp_planner import WeightsOnlyLoadPlanner

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        target = {"model": model_sd, "optim": optim_sd}
        dcp.load(target, checkpoint_id=str(folder), planner=WeightsOnlyLoadPlanner(), no_dist=not distributed)
        set_state_dict(self.model, self.optimizer, model_state_dict=target["model"],
                       optim_state_dict=target["optim"])


class DeepSpeedEngine(Engine):
    """DeepSpeed owns backward (it divides by the accumulation steps), clipping, the step and its checkpoints."""

    def __init__(self, engine: Any) -> None:
        self.model = engine
        self.optimizer = engine.optimizer
        self.scheduler = engine.lr_scheduler  # our schedule, stepped by the engine

    def micro_step(self, last: bool) -> contextlib.AbstractContextManager:
        return _NO_CONTEXT

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.model.backward(loss)
        if not last:
            self.model.step()  # DeepSpeed counts micro-steps; it steps only at the boundary

    def grad_norm(self) -> None:
        return None  # DeepSpeed knows it only after its step

    def step(self) -> torch.Tensor:
        self.model.step()
        return torch.tensor(float(self.model.get_global_grad_norm() or 0.0))

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def save(self, folder: Path, distributed: bool) -> None:
        deepspeed_engine.save(self.model, folder)

    def load(self, folder: Path, distributed: bool) -> None:
        deepspeed_engine.load(self.model, folder)


def build_engine(model_factory, init_on_meta: bool, cfg: RunConfig, env: DistEnv) -> Engine:
    """The model from `model_factory()` wrapped by the configured strategy, with its optimizer and schedule."""
    spec = parallelize.ParallelSpec.from_config(cfg)
    if spec.strategy == "deepspeed":
        return DeepSpeedEngine(deepspeed_engine.build(model_factory(), cfg, spec, env))
    if spec.strategy == "fsdp" and init_on_meta:
        with torch.device("meta"):
            model = model_factory()
        model = parallelize.parallelize(model, spec, env.device)
        model.to_empty(device=env.device)
        model.init_weights()
    else:
        model = parallelize.parallelize(model_factory().to(env.device), spec, env.device)
    return TorchEngine(model, cfg)
