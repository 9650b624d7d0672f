"""The process-group contract: read the torchrun / Kubeflow env, start the group, agree on stop flags."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from datajobs.errors import ConfigError
from trainer.config import DistributedConfig


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: global rank, world size, local rank, device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None
    return default


def read_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's env; a PyTorchJob pod without torchrun sets RANK itself."""
    world = _env_int("WORLD_SIZE", default=1)
    rank = _env_int("RANK", default=0)
    local = _env_int("LOCAL_RANK", default=0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but CUDA is not available on this machine; use auto or cpu")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init(cfg: DistributedConfig, device_request: str) -> DistEnv:
    """Start the process group when WORLD_SIZE > 1 (env:// rendezvous through MASTER_ADDR/MASTER_PORT)."""
    rank, world, local = read_env()
    device = pick_device(device_request, local)
    if world > 1:
        if cfg.strategy == "none":
            raise ConfigError(
                f"WORLD_SIZE={world} but distributed.strategy is none; set ddp, fsdp or deepspeed"
            )
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(f"WORLD_SIZE={world} but {name} is not set (launch with torchrun)")
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                rank=rank,
                world_size=world,
                timeout=dt.timedelta(seconds=cfg.timeout_seconds),
                device_id=device if device.type == "cuda" else None,
            )
    elif cfg.strategy != "none" and not dist.is_initialized():
        # A one-process group, so a ddp/fsdp config runs unchanged on one process (e.g. a job with no workers).
        backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(timeout_seconds: float = 60) -> None:
    """Leave the group together: a short barrier first, so no rank tears down links a peer still uses."""
    if dist.is_initialized():
        if dist.get_world_size() > 1:
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=dt.timedelta(seconds=timeout_seconds))
                else:
                    dist.barrier()
            except RuntimeError:
                pass  # a peer is already gone; tearing down is all that is left
        dist.destroy_process_group()


def any_rank(flags: list[bool], env: DistEnv) -> list[bool]:
    """Each flag is true on every rank when it is set on any rank (one all-reduce: all ranks stop together)."""
    if not env.is_distributed:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def mean_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    """Average a few scalars over ranks (for logging the global loss)."""
    if not env.is_distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / env.world_size).tolist()


def sum_over_ranks(values: list[float], env: DistEnv) -> list[float]:
    if not env.is_distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()
