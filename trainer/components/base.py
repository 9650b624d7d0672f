"""The component contract: what the one training loop needs from a model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.utils.data import Dataset

from datajobs.errors import ConfigError
from datajobs.store import Store
from trainer.config import RunConfig, validation_message


class ModelConfig(BaseModel):
    """Base of every component's `model:` section (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


@dataclass
class ComponentData:
    """The splits a component trains and evaluates on, and where they came from."""

    train: Dataset
    val: Dataset
    test: Dataset | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # dataset ref asked -> resolved name@version
    card: str = ""  # markdown: which rows were used and why


@dataclass
class StepOutput:
    """One micro-batch's loss and how much data it covered."""

    loss: torch.Tensor
    samples: int
    tokens: int = 0


@dataclass
class ReportSection:
    title: str
    markdown: str
    metrics: dict[str, float] = field(default_factory=dict)


class Component(ABC):
    """A trainable unit: builds data and model from the run config, computes loss and evaluation.

    Components hold no loop, no checkpointing and no parallelism: the trainer applies those.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    model_config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    needs: ClassVar[tuple[str, ...]] = ()  # e.g. ("cuda",) or optional extras such as ("graph",)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        try:
            self.model_cfg = self.model_config_cls.model_validate(cfg.model)
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, "config", prefix="model")) from None

    @abstractmethod
    def build_data(self, store: Store) -> ComponentData:
        """Read dataset versions (verified) and return the splits."""

    @abstractmethod
    def build_model(self, data: ComponentData) -> nn.Module:
        """A plain nn.Module (no I/O, no parallelism)."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Loss of one micro-batch (already on the device)."""

    def evaluation_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Loss of one validation batch; defaults to the training loss."""
        return self.training_step(model, batch)

    def init_on_meta(self) -> bool:
        """True when build_model can run on the meta device and `model.init_weights()` then fills each rank's
        shards (so a large model is never materialised whole on one host under FSDP); default False."""
        return False

    def flops_per_sample(self, model: nn.Module) -> float | None:
        """Training FLOPs per sample (forward + backward), for MFU; None when unknown."""
        return None

    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        """Final evaluation sections for report.md (rank 0, after training)."""
        return []


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (nested in dicts/lists/tuples, or objects with .to such as PyG batches) to a device."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
