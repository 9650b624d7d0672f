"""The typed run config: one YAML file plus `--set section.key=value` overrides, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datajobs.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str | None = Field(None, description="storage root URL; default $ASTROBIO_DATA_ROOT or ./data")
    dataset: str = Field(description="dataset reference NAME[@VERSION|@latest]")
    batch_size: int = Field(64, gt=0, description="micro-batch size per data-parallel rank")
    eval_batch_size: int | None = Field(None, gt=0, description="validation batch size; default batch_size")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    split_seed: int = Field(0, description="seed of the train/val/test split (stable per item)")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="share of items held out for validation")
    test_fraction: float = Field(0.15, ge=0, lt=1, description="share of items held out for the final test")


class OptimConfig(Section):
    name: Literal["adamw", "adamw8bit", "sgd"] = Field("adamw", description="adamw8bit needs the gpu extra")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="decoupled decay of matrices (not biases/norms)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon")
    momentum: float = Field(0.9, ge=0, description="sgd only")


class ScheduleConfig(Section):
    name: Literal["cosine", "constant"] = Field("cosine", description="after warmup: cosine decay or constant")
    warmup_steps: int = Field(0, ge=0, description="linear warmup from lr/warmup_steps to lr")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of optim.lr")


class TrainConfig(Section):
    max_steps: int = Field(gt=0, description="optimizer steps")
    grad_accum_steps: int = Field(1, gt=0, description="micro-batches per optimizer step (no sync until the last)")
    clip_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null = no clipping")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast (CPU and GPU) or plain fp32")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when available")
    seed: int = Field(0, description="seed of initialisation and of the sample order")
    eval_every: int = Field(100, gt=0, description="evaluate every N optimizer steps (and at the end)")
    eval_batches: int | None = Field(None, gt=0, description="cap on validation batches per evaluation")
    early_stopping_patience: int | None = Field(None, gt=0, description="evaluations without improvement")
    log_every: int = Field(10, gt=0, description="console line and throughput window every N steps")
    activation_checkpointing: Literal["none", "selective", "full"] = Field(
        "none", description="recompute activations of every block (full) or every other block (selective)")
    compile: bool = Field(False, description="torch.compile each block")
    inject_nan_at_step: int | None = Field(None, ge=0, description="testing aid (fault injection): a non-finite "
                                           "value at this step")
    inject_nan_rank: int | None = Field(None, ge=0, description="testing aid: only on this rank (needs "
                                        "inject_nan_at_step)")
    inject_nan_where: Literal["loss", "grad"] = Field("loss", description="testing aid: NaN loss, or a finite loss "
                                                      "whose gradient is NaN")

    @model_validator(mode="after")
    def _check_injection(self) -> TrainConfig:
        if self.inject_nan_rank is not None and self.inject_nan_at_step is None:
            raise ValueError("train.inject_nan_rank is set without train.inject_nan_at_step")
        return self


class CheckpointConfig(Section):
    every_steps: int = Field(100, gt=0, description="checkpoint every N steps (and at the end and on SIGTERM)")
    keep_last: int = Field(3, gt=0, description="complete checkpoints kept; older ones are deleted")
    resume: bool = Field(True, description="resume from the newest complete checkpoint in the run folder")
    save_best: bool = Field(True, description="keep the best validation weights in best/model.safetensors")
    max_consecutive_failures: int = Field(3, gt=0, description="checkpoint writes failing in a row before the "
                                          "run stops with exit 4 (each failure is logged and counted)")
    lease_timeout_seconds: float = Field(60, gt=0, description="a run folder's lease whose heartbeat is older "
                                         "is taken over (its holder died); a live holder makes a second run exit 2")
    async_save: bool = Field(False, description="periodic saves copy the state to CPU memory and write it in the "
                             "background (one in flight); the last, SIGTERM and best saves wait for it")


class LoggingConfig(Section):
    run_dir: str = Field("./runs", description="folder holding one folder per run: a local path or an fsspec "
                         "URL (s3://bucket/prefix; credentials from AWS_* in the environment)")
    run_name: str | None = Field(None, description="default: the component name; same name = resume")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port (+ local rank); 0/none off")
    metrics_linger_seconds: float = Field(0, ge=0, description="keep /metrics up this long after the run")
    console: bool = Field(True, description="progress lines on stderr (rank 0)")
    tensorboard: bool = Field(False, description="TensorBoard events in <run>/tensorboard (tensorboard extra)")
    wandb: bool = Field(False, description="Weights & Biases run (wandb extra; WANDB_MODE=offline works)")
    wandb_project: str = Field("astrobio-train", description="W&B project name")

    @model_validator(mode="after")
    def _check_remote_run_dir(self) -> LoggingConfig:
        if "://" in self.run_dir and not self.run_dir.startswith("s3://"):
            raise ValueError(f"logging.run_dir {self.run_dir!r}: a run folder is a local path or an s3:// URL (the "
                             f"lease needs S3's conditional writes)")
        if self.run_dir.startswith("s3://") and self.tensorboard:
            raise ValueError("logging.tensorboard writes event files by appending, which an s3:// run_dir cannot "
                             "take; turn it off or use a local run_dir")
        return self


class DistributedConfig(Section):
    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = Field("none", description="how ranks share the work")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl on CUDA, else gloo")
    timeout_seconds: int = Field(1800, gt=0, description="collective timeout")
    fsdp_reshard_after_forward: bool = Field(True, description="true = ZeRO-3, false = ZeRO-2")
    fsdp_param_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="FSDP2 compute dtype of params")
    zero_stage: Literal[1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload_optimizer: bool = Field(False, description="DeepSpeed: optimizer state and step on the CPU")
    offload_params: bool = Field(False, description="DeepSpeed ZeRO-3: parameters on the CPU")


class RunConfig(Section):
    component: str = Field(description="what to train; `astrobio-train components` lists them")
    description: str = Field("", description="free text, shown in the report")
    data: DataConfig
    model: dict[str, Any] = Field(default_factory=dict, description="validated by the component's ModelConfig")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _check_combinations(self) -> RunConfig:
        from trainer.parallelize import ParallelSpec, check_spec

        check_spec(ParallelSpec.from_config(self))
        if self.distributed.strategy == "deepspeed" and "://" in self.logging.run_dir:
            raise ValueError(f"logging.run_dir {self.logging.run_dir!r}: DeepSpeed writes its checkpoints to a local "
                             f"folder; use a local run_dir (a PVC) with distributed.strategy=deepspeed")
        if self.data.val_fraction + self.data.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1")
        return self

    @property
    def run_name(self) -> str:
        return self.logging.run_name or self.component

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _parse_value(text: str) -> Any:
    """A --set value: YAML scalar/list syntax, so 3e-4, true, null and [1,2] keep their types."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a nested dict (creating sections as needed)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return raw


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "config"
    if error["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def validation_message(exc: ValidationError, source: str, prefix: str = "") -> str:
    """One line naming the first offending key (and how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    if prefix:
        first = {**first, "loc": (prefix, *first["loc"])}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {_describe(first)}{more}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config; any problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found (examples are in configs/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, str(path))) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
