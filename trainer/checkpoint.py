"""Checkpoints through torch.distributed.checkpoint: atomic step folders, keep-last-K, best weights.

A checkpoint folder `checkpoints/step-00000042/` holds the DCP shards of model and optimizer (any
strategy: single process, DDP, FSDP2), `trainer_state.json` (step, data position, scheduler, early
stopping, lineage) and `rng-rank<R>.npz` per rank. It is written under `.tmp-step-…` and renamed once
every rank has finished, so a killed job never leaves a half checkpoint that resume would pick up.
Our payloads load without unpickling objects: DCP entries with weights_only=True, JSON, npz
(allow_pickle=False). The one exception is DCP's own `.metadata` index, which torch writes and reads with pickle.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from datajobs.errors import DataError
from trainer import deepspeed_engine
from trainer.distributed import DistEnv, barrier

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    consumed_batches: int = 0  # micro-batches taken from the sampler (same on every rank)
    world_size: int = 1
    micro_batch_size: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False  # a rerun of an early-stopped run trains no further
    lineage: dict[str, str] = field(default_factory=dict)
    config_digest: str = ""


def _rng_state() -> dict[str, np.ndarray]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    arrays = {
        "torch": torch.get_rng_state().numpy(),
        "python_internal": np.asarray(internal, dtype=np.int64),
        "python_meta": np.asarray([version, -1 if gauss is None else 1], dtype=np.int64),
        "python_gauss": np.asarray([0.0 if gauss is None else gauss], dtype=np.float64),
        "numpy_keys": np_state[1],
        "numpy_meta": np.asarray([np_state[2], np_state[3]], dtype=np.int64),
        "numpy_gauss": np.asarray([np_state[4]], dtype=np.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["cuda"] = torch.cuda.get_rng_state().numpy()
    return arrays


def _set_rng_state(arrays: dict[str, np.ndarray]) -> None:
    torch.set_rng_state(torch.from_numpy(arrays["torch"].copy()))
    version, has_gauss = (int(x) for x in arrays["python_meta"])
    gauss = float(arrays["python_gauss"][0]) if has_gauss > 0 else None
    random.setstate((version, tuple(int(x) for x in arrays["python_internal"]), gauss))
    pos, has_np_gauss = (int(x) for x in arrays["numpy_meta"])
    np.random.set_state(("MT19937", arrays["numpy_keys"], pos, has_np_gauss, float(arrays["numpy_gauss"][0])))
    if "cuda" in arrays and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(arrays["cuda"].copy()))


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """DCP's planner, but the non-tensor entries (e.g. optimizer hyper-parameters) load with weights_only=True."""

    def load_bytes(self, read_item, value) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def unique_storage(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases of tied weights (safetensors refuses shared storage); the first name is kept."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    unique = {}
    for name, tensor in weights.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.contiguous()
    return unique


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


class Checkpointer:
    """Saves and restores training state under `<run>/checkpoints`, and best weights under `<run>/best`."""

    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int) -> None:
        self.root = run_dir / "checkpoints"
        self.best_dir = run_dir / "best"
        self.env = env
        self.keep_last = keep_last
        if env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)  # left by a job killed while saving
        barrier(env)

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.root.glob(f"{STEP_PREFIX}*") if (p / STATE_FILE).is_file()]  # written last
        return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState) -> tuple[Path, float]:
        """Write a checkpoint collectively; returns its folder and the seconds it took."""
        started = time.perf_counter()
        final = self.root / step_dir_name(state.step)
        tmp = self.root / f"{TMP_PREFIX}{final.name}"
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(self.env)
        if deepspeed_engine.is_engine(model):
            deepspeed_engine.save(model, tmp)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp),
                     no_dist=not self.env.is_distributed)
        np.savez(tmp / f"rng-rank{self.env.rank}.npz", **_rng_state())
        barrier(self.env)
        if self.env.is_main:
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier(self.env)
        return final, time.perf_counter() - started

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainerState:
        """Restore model, optimizer and this rank's RNG from a complete checkpoint."""
        state = TrainerState(**json.loads((path / STATE_FILE).read_text()))
        if state.world_size != self.env.world_size:
            raise DataError(
                f"{path} was written with {state.world_size} data-parallel ranks, this run has "
                f"{self.env.world_size}: the data position cannot be resharded; resume with "
                f"{state.world_size} ranks or start a new run (logging.run_name)"
            )
        if deepspeed_engine.is_engine(model):
            deepspeed_engine.load(model, path)
        else:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            target = {"model": model_sd, "optim": optim_sd}
            dcp.load(target, checkpoint_id=str(path), planner=WeightsOnlyLoadPlanner(),
                     no_dist=not self.env.is_distributed)
            set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
        rng_file = path / f"rng-rank{self.env.rank}.npz"
        if rng_file.is_file():
            with np.load(rng_file, allow_pickle=False) as arrays:
                _set_rng_state(dict(arrays))
        return state

    def save_best(self, model: nn.Module, step: int, metric_name: str, metric: float) -> None:
        """Full (gathered) weights into `best/` (the bundle's weights part), written atomically by rank 0;
        the run completes the bundle (component state, config, lineage, domain) when it ends."""
        from trainer.bundle import write_weights_only

        if deepspeed_engine.is_engine(model):
            weights = deepspeed_engine.full_state_dict(model)
        else:
            weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            write_weights_only(self.best_dir, unique_storage(weights),
                               {"step": step, "metric": metric_name, "value": metric})
        barrier(self.env)
