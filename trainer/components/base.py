"""The component contract: what the one training loop needs from a model family."""

from __future__ import annotations

import json
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.utils.data import Dataset

from datajobs.errors import ConfigError, DataError
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


@dataclass
class InputField:
    """One column a component's predict accepts, with its unit and physically allowed range."""

    name: str
    unit: str
    dtype: str  # "float" | "int" | "str" | "bool"
    required: bool = True  # False: may be absent or empty (the component imputes it from its state)
    minimum: float | None = None  # inclusive, unless exclusive_minimum; outside -> InvalidInput, never imputed
    maximum: float | None = None
    description: str = ""
    exclusive_minimum: bool = False  # e.g. a radius must be > 0


@dataclass
class ComponentState:
    """Everything that maps raw inputs to model inputs and outputs back (saved in the bundle, never pickled)."""

    meta: dict[str, Any]  # JSON-serialisable: feature names, scalers as lists, vocab, tokenizer JSON text ...
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # np.savez, loaded with allow_pickle=False


Problem = tuple[int, str, Any, str]  # (row, column, value, why); row counts from 1 (the first data row)


class InvalidInput(DataError):
    """Input rows that are physically impossible or malformed: exit 2, one problem per bad value."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        rows = len({row for row, *_ in problems})
        row, column, value, why = problems[0]
        super().__init__(f"{rows} invalid input row(s); first: row {row}, {column}={value!r}: {why}")


class Domain(Protocol):
    """The training-domain check a bundle carries (trainer.bundle.TrainingDomain)."""

    def check(self, component: Component, inputs: pa.Table) -> tuple[np.ndarray, list[str]]: ...


class Component(ABC):
    """A trainable unit: builds data and model from the run config, computes loss and evaluation.

    Components hold no loop, no checkpointing and no parallelism: the trainer applies those.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    model_config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    # names `astrobio-train predict --option KEY=VALUE` may pass to predict_file
    predict_options: ClassVar[tuple[str, ...]] = ()
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

    def calibrate(self, model: nn.Module, data: ComponentData, device: torch.device) -> None:
        """Fit post-training statistics that predict needs from the validation split (rank 0, after training,
        before the bundle is written; e.g. recalibrated intervals); none by default."""
        return None

    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        """Final evaluation sections for report.md (rank 0, after training)."""
        return []

    # -- the bundle contract (docs/components.md) -------------------------------------------------
    frozen: bool = False  # True after load_state: build_data must reuse the loaded statistics

    def state(self) -> ComponentState:
        """What build_data computed that predict needs (called on rank 0, saved into the bundle)."""
        raise ConfigError(f"component {self.name!r} has no bundle state (it does not implement state())")

    def load_state(self, state: ComponentState) -> None:
        """Restore what build_data computed; afterwards build_model(None) and predict work without data."""
        raise ConfigError(f"component {self.name!r} has no bundle state (it does not implement load_state())")

    def input_schema(self) -> list[InputField]:
        """The columns predict accepts; [] for components whose predict input is not a table."""
        return []

    def predict(self, model: nn.Module, inputs: pa.Table, device: torch.device) -> pa.Table:
        """One output row per input row (already checked by check_inputs); returns only the new columns."""
        raise ConfigError(f"component {self.name!r} does not predict from a table")

    def domain_features(self, inputs: pa.Table) -> np.ndarray | None:
        """Scaled features for the training-domain check (kNN distance); None = no domain check."""
        return None

    def training_inputs(self) -> pa.Table | None:
        """The raw training inputs (input_schema columns) the training domain is built from; None = none."""
        return None

    def predict_file(self, model: nn.Module, input_path: str, output_path: str, device: torch.device,
                     options: dict[str, Any]) -> str:
        """Table in (CSV, parquet or JSONL by suffix; '-' = CSV on stdin/stdout), the same format out with the
        prediction columns appended; returns a one-line summary. Options: `skip_invalid` (write invalid rows
        with empty predictions instead of raising InvalidInput), `domain` (a Domain), `progress` (bool)."""
        table = read_table(input_path)
        outputs, problems = predict_table(self, model, table, device, options.get("domain"),
                                          skip_invalid=bool(options.get("skip_invalid")),
                                          progress=bool(options.get("progress")))
        for name in outputs.column_names:
            if name in table.column_names:
                table = table.drop_columns([name])
        out = table
        for name in outputs.column_names:
            out = out.append_column(name, outputs.column(name))
        write_table(out, output_path)
        bad = len({row for row, *_ in problems})
        skipped = f"; {bad} invalid row(s) written with empty predictions" if bad else ""
        where = "stdout" if output_path == "-" else output_path
        return f"predicted {out.num_rows} row(s) into {where}{skipped}"

    def evaluate(self, model: nn.Module, store: Store, ref: str, device: torch.device) -> list[ReportSection]:
        """The component's report on another dataset version, with the bundle's statistics kept frozen."""
        if not self.frozen:
            raise ConfigError(f"component {self.name!r}: evaluate needs the bundle state loaded (load_state)")
        self.cfg = self.cfg.model_copy(update={"data": self.cfg.data.model_copy(update={"dataset": ref})})
        data = self.build_data(store)
        return self.report(model, data, device)


# -- table input and output ----------------------------------------------------------------------
CSV_NULLS = ["", "NA", "N/A", "null", "NULL", "None"]
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def table_format(path: str) -> str:
    if path == "-":
        return "csv"
    fmt = TABLE_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown table format; use one of {', '.join(TABLE_SUFFIXES)} (or '-' for CSV "
                        f"on stdin/stdout)")
    return fmt


def read_table(path: str) -> pa.Table:
    """A CSV, parquet or JSONL file (by suffix; '-' reads CSV from stdin) as an Arrow table."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fmt = table_format(path)
    if path != "-" and not Path(path).is_file():
        raise DataError(f"input file {path} not found")
    source = pa.py_buffer(sys.stdin.buffer.read()) if path == "-" else path
    try:
        if fmt == "csv":  # "nan" stays a NaN (an error in a required column), not an empty cell
            return pcsv.read_csv(source if path != "-" else pa.BufferReader(source),
                                 convert_options=pcsv.ConvertOptions(null_values=CSV_NULLS, strings_can_be_null=True))
        if fmt == "parquet":
            return pq.read_table(source)
        return pjson.read_json(source)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a readable {fmt} table: {first}") from None


def write_table(table: pa.Table, path: str) -> None:
    """Write in the format of `path` ('-' = CSV on stdout); files are written atomically (temp + rename)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fmt = table_format(path)
    if path == "-":
        sink = pa.BufferOutputStream()
        pcsv.write_csv(table, sink)
        sys.stdout.buffer.write(sink.getvalue().to_pybytes())
        sys.stdout.flush()
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    if fmt == "csv":
        pcsv.write_csv(table, tmp)
    elif fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        with open(tmp, "w") as f:
            for batch in table.to_batches(65536):
                for row in batch.to_pylist():
                    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                    f.write(json.dumps(clean, allow_nan=False, default=str) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(target)


def _number(value: Any) -> float | None:
    """A cell as a float; None when empty; raises ValueError when it is not a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    return None if text == "" else float(text)


def coerce_inputs(schema: list[InputField], table: pa.Table) -> tuple[pa.Table, list[Problem]]:
    """The schema's columns typed (float64 for numbers, null for empty/absent optional values) and every
    problem found: a missing required value, NaN or infinity, a value outside the physical range, a value of
    the wrong type. A missing required column is a DataError (no row could be predicted)."""
    absent = [f for f in schema if f.required and f.name not in table.column_names]
    if absent:
        f = absent[0]
        unit = f" [{f.unit}]" if f.unit else ""
        raise DataError(f"the input lacks the required column {f.name!r}{unit}; columns found: "
                        f"{', '.join(table.column_names) or 'none'}")
    problems: list[Problem] = []
    columns: dict[str, pa.Array] = {}
    n = table.num_rows
    for f in schema:
        if f.name not in table.column_names:  # an absent optional column: all empty
            columns[f.name] = pa.nulls(n, pa.float64() if f.dtype in ("float", "int") else pa.string())
            continue
        column = table.column(f.name)
        if f.dtype in ("float", "int") and (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            columns[f.name] = _coerce_numeric(f, column, problems)
            continue
        values = column.to_pylist()
        if f.dtype in ("float", "int"):
            out: list[float | None] = []
            for i, raw in enumerate(values):
                try:
                    v = _number(raw)
                except (TypeError, ValueError):
                    problems.append((i + 1, f.name, raw, f"not a number (expected {f.dtype}"
                                     f"{', ' + f.unit if f.unit else ''})"))
                    out.append(None)
                    continue
                if v is not None and math.isnan(v) and not f.required:
                    v = None  # an empty optional cell as pandas writes it
                out.append(v)
                why = _check_value(f, v)
                if why:
                    problems.append((i + 1, f.name, raw, why))
            columns[f.name] = pa.array(out, type=pa.float64())
        else:
            for i, raw in enumerate(values):
                if f.required and (raw is None or str(raw).strip() == ""):
                    problems.append((i + 1, f.name, raw, "required value missing"))
            columns[f.name] = pa.array(values)
    problems.sort(key=lambda p: (p[0], [f.name for f in schema].index(p[1])))
    return pa.table(columns) if columns else pa.table({}), problems


def _coerce_numeric(f: InputField, column: pa.ChunkedArray, problems: list[Problem]) -> pa.Array:
    """A numeric column checked with numpy; only the flagged rows go through _check_value."""
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    nan = np.isnan(values) & ~nulls
    empty = nulls | (nan if not f.required else np.zeros_like(nulls))  # NaN in an optional column = empty
    with np.errstate(invalid="ignore"):
        flag = (nulls & f.required) | ~np.isfinite(values) & ~empty
        if f.minimum is not None:
            flag |= (values <= f.minimum) if f.exclusive_minimum else (values < f.minimum)
        if f.maximum is not None:
            flag |= values > f.maximum
        if f.dtype == "int":
            flag |= np.isfinite(values) & (values != np.round(values))
    for i in np.flatnonzero(flag & ~(empty & ~nulls)):
        v = None if nulls[i] else float(values[i])
        why = _check_value(f, v)
        if why:
            problems.append((int(i) + 1, f.name, v, why))
    return pa.array(values, type=pa.float64(), mask=empty)


def _check_value(f: InputField, v: float | None) -> str:
    if v is None:
        return "required value missing" if f.required else ""
    if math.isnan(v):
        return "NaN in a required column"
    if math.isinf(v):
        return "not finite"
    unit = f" {f.unit}" if f.unit else ""
    if f.minimum is not None and (v <= f.minimum if f.exclusive_minimum else v < f.minimum):
        bound = "must be above" if f.exclusive_minimum else "below the physical minimum"
        return f"{bound} {f.minimum:g}{unit}"
    if f.maximum is not None and v > f.maximum:
        return f"above the physical maximum {f.maximum:g}{unit}"
    if f.dtype == "int" and v != int(v):
        return "not an integer"
    return ""


def check_inputs(schema: list[InputField], table: pa.Table) -> pa.Table:
    """The schema's columns typed for predict; raises InvalidInput listing every problem."""
    typed, problems = coerce_inputs(schema, table)
    if problems:
        raise InvalidInput(problems)
    return typed


PREDICT_CHUNK = 16384


def predict_table(component: Component, model: nn.Module, table: pa.Table, device: torch.device,
                  domain: Domain | None = None, *, skip_invalid: bool = False,
                  progress: bool = False) -> tuple[pa.Table, list[Problem]]:
    """The prediction columns (plus in_training_domain/domain_note when a domain is given) for every input row,
    and the problems found; invalid rows raise InvalidInput unless skip_invalid (then their outputs are null)."""
    schema = component.input_schema()
    if not schema:
        raise ConfigError(f"component {component.name!r} does not predict from a table")
    typed, problems = coerce_inputs(schema, table)
    if problems and not skip_invalid:
        raise InvalidInput(problems)
    bad = np.zeros(table.num_rows, dtype=bool)
    for row, *_ in problems:
        bad[row - 1] = True
    valid = typed.filter(pa.array(~bad)) if bad.any() else typed
    parts: list[pa.Table] = []
    starts = range(0, valid.num_rows, PREDICT_CHUNK)
    if progress and valid.num_rows > 4 * PREDICT_CHUNK:  # a bar for large inputs only
        from tqdm import tqdm

        starts = tqdm(starts, total=len(starts), unit="chunk", desc="predict", file=sys.stderr)
    model.eval()
    for start in starts:
        chunk = valid.slice(start, PREDICT_CHUNK)
        with torch.no_grad():
            out = component.predict(model, chunk, device)
        if domain is not None:
            inside, notes = domain.check(component, chunk)
            out = out.append_column("in_training_domain", pa.array(inside, type=pa.bool_()))
            out = out.append_column("domain_note", pa.array(notes, type=pa.string()))
        parts.append(out)
    if not parts:  # no valid rows: the column names and types from an empty call
        empty = valid.slice(0, 0)
        out = component.predict(model, empty, device)
        if domain is not None:
            out = out.append_column("in_training_domain", pa.array([], type=pa.bool_()))
            out = out.append_column("domain_note", pa.array([], type=pa.string()))
        parts.append(out)
    outputs = pa.concat_tables(parts)
    if bad.any():  # scatter back: invalid rows get nulls
        index = np.full(table.num_rows, -1, dtype=np.int64)
        index[~bad] = np.arange(int((~bad).sum()))
        if outputs.num_rows == 0:
            outputs = pa.table({f.name: pa.nulls(table.num_rows, f.type) for f in outputs.schema})
        else:
            take = pa.array(np.where(index < 0, 0, index), mask=index < 0)
            outputs = pa.table({name: pc.take(outputs.column(name), take) for name in outputs.column_names})
    return outputs, problems


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move tensors (nested in dicts/lists/tuples, or objects with .to such as PyG batches) to a device."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
