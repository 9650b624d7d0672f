"""The one loader of run folders and model bundles: write a trained model with everything it needs, read it back.

A bundle (`<run>/best/`, or what `astrobio-train export` writes) holds `model.safetensors`, `component.json`
(ComponentState.meta), `component.npz` (ComponentState.arrays), the resolved `config.yaml`, `bundle.json`
(component, step, lineage with manifest sha256s, report metrics, code version, created time) and `domain.npz`
(the training domain). It is written under a temp folder, fsynced and renamed. Loading needs neither the
dataset nor the run folder and never unpickles: safetensors, JSON, YAML (safe_load) and npz (allow_pickle=False).
No other module globs checkpoint folders or opens a safetensors file.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from datajobs.errors import ConfigError, DataError
from datajobs.store import MANIFEST, Store, code_version, sha256_bytes
from trainer import components
from trainer.components.base import Component, ComponentState, ReportSection, predict_table
from trainer.config import RunConfig, dump_config, load_config
from trainer.runfolder import RunFolder, fsync_path, is_url

BUNDLE_FORMAT = 1
WEIGHTS = "model.safetensors"
STATE_JSON = "component.json"
STATE_NPZ = "component.npz"
CONFIG = "config.yaml"
INFO = "bundle.json"
DOMAIN = "domain.npz"
BEST = "best"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


# -- files ------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    fsync_path(path)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temp folder in for `final` (old one removed after the rename)."""
    fsync_path(tmp)
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Weights as one safetensors file, fsynced (tied aliases must already be dropped)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(path))
    fsync_path(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path} is not a readable safetensors file ({exc}); retrain or re-export it") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into a plain module; only a tied alias may be absent from the file."""
    missing, unexpected = model.load_state_dict(read_weights(Path(path)), strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in params if k not in missing}
    missing = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]  # tied: loaded once
    if missing or unexpected:
        raise DataError(f"{path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (its trainer state is written last)."""
    done = [p for p in (run_dir / CHECKPOINTS).glob("step-*") if (p / TRAINER_STATE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


def load_checkpoint_weights(model: nn.Module, path: Path) -> None:
    """The `model` entry of a DCP checkpoint folder (non-tensor entries with weights_only=True)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from trainer.dcp_planner import WeightsOnlyLoadPlanner

    state = {"model": get_model_state_dict(model)}
    dcp.load(state, checkpoint_id=str(path), planner=WeightsOnlyLoadPlanner(), no_dist=True)
    set_model_state_dict(model, state["model"])


def load_base(model: nn.Module, path: str | Path) -> None:
    """Base weights for fine-tuning: a .safetensors file, a bundle or run folder, or a DCP checkpoint folder."""
    path = Path(path)
    if path.suffix == ".safetensors":
        load_weights(model, path)
    elif (path / WEIGHTS).is_file():
        load_weights(model, path / WEIGHTS)
    elif (path / BEST / WEIGHTS).is_file():
        load_weights(model, path / BEST / WEIGHTS)
    elif path.is_dir():
        load_checkpoint_weights(model, path)
    else:
        raise ConfigError(f"model.base_checkpoint {str(path)!r} not found (a .safetensors file, a bundle, a run "
                          f"folder or a checkpoint folder)")


def dataset_lineage(store: Store, lineage: dict[str, str]) -> dict[str, dict[str, str]]:
    """{ref asked: {"version": NAME@VERSION, "manifest_sha256": ...}} for the versions a run used."""
    out = {}
    for ref, resolved in lineage.items():
        version = store.open(resolved)
        raw = store.fs.cat_file(store.fs_path(f"{version.url}/{MANIFEST}"))
        out[ref] = {"version": version.ref, "manifest_sha256": sha256_bytes(raw)}
    return out


# -- the training domain --------------------------------------------------------------------------
@dataclass
class TrainingDomain:
    """Whether an input resembles the training data: per-column training ranges plus the mean distance to the
    k nearest training points in the component's scaled feature space, against the training distribution of
    that distance (each training point to its k nearest others)."""

    points: np.ndarray  # (n, d) scaled training features
    distances: np.ndarray  # (n,) sorted training kNN distances
    columns: list[str]  # raw input columns with a training range
    low: np.ndarray
    high: np.ndarray
    k: int = 5
    quantile: float = 0.99
    _tree: Any = field(default=None, repr=False)

    @property
    def threshold(self) -> float:
        return float(np.quantile(self.distances, self.quantile))

    @classmethod
    def fit(cls, component: Component, k: int = 5, quantile: float = 0.99) -> TrainingDomain | None:
        inputs = component.training_inputs()
        if inputs is None:
            return None
        points = component.domain_features(inputs)
        if points is None:
            return None
        k = max(1, min(k, len(points) - 1))
        numeric = [f.name for f in component.input_schema() if f.dtype in ("float", "int")
                   and f.name in inputs.column_names]
        values = [np.asarray(inputs.column(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in numeric]
        low = np.array([np.nanmin(v) for v in values]) if values else np.zeros(0)
        high = np.array([np.nanmax(v) for v in values]) if values else np.zeros(0)
        domain = cls(np.asarray(points, dtype=np.float64), np.zeros(0), numeric, low, high, k, quantile)
        dist, _ = domain.tree.query(domain.points, k=k + 1)
        domain.distances = np.sort(dist[:, 1:].mean(axis=1))  # column 0 is the point itself
        return domain

    @property
    def tree(self) -> Any:
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.points)
        return self._tree

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mean distance of each row to its k nearest training points."""
        if len(features) == 0:
            return np.zeros(0)
        dist, _ = self.tree.query(np.asarray(features, dtype=np.float64), k=self.k)
        return dist.reshape(len(features), -1).mean(axis=1)

    def check(self, component: Component, inputs: pa.Table) -> tuple[np.ndarray, list[str]]:
        """(in_training_domain per row, the reason when not: ranges first, then the kNN distance)."""
        dist = self.distance(component.domain_features(inputs))
        limit = self.threshold
        reasons: list[list[str]] = [[] for _ in range(inputs.num_rows)]
        for col, lo, hi in zip(self.columns, self.low, self.high, strict=True):
            if col not in inputs.column_names:
                continue
            values = np.asarray(inputs.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
            for i in np.flatnonzero(values < lo):
                reasons[i].append(f"{col} {values[i]:.3g} below the training range {lo:.3g}-{hi:.3g}")
            for i in np.flatnonzero(values > hi):
                reasons[i].append(f"{col} {values[i]:.3g} above the training range {lo:.3g}-{hi:.3g}")
        pct = f"{self.quantile * 100:g}th percentile"
        for i in np.flatnonzero(dist > limit):
            reasons[i].append(f"nearest-neighbour distance {dist[i]:.2f} (mean of {self.k}) above the training "
                              f"{pct} {limit:.2f}")
        inside = np.array([not r for r in reasons], dtype=bool)
        return inside, ["; ".join(r) for r in reasons]

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, points=self.points, distances=self.distances, columns=np.array(self.columns, dtype=str),
                     low=self.low, high=self.high, k=np.array(self.k), quantile=np.array(self.quantile))
        fsync_path(path)

    @classmethod
    def load(cls, path: Path) -> TrainingDomain:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["points"], z["distances"], [str(c) for c in z["columns"]], z["low"], z["high"],
                       int(z["k"]), float(z["quantile"]))


# -- writing ----------------------------------------------------------------------------------------
def has_state(component: Component) -> bool:
    """True when the component implements the bundle contract's state() (every component should)."""
    return type(component).state is not Component.state


def write_weights_only(folder: Path, weights: dict[str, torch.Tensor], best: dict[str, Any]) -> None:
    """The weights part of a bundle (what the loop's best-so-far save writes during training); the run
    completes it with write_bundle at its end."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(weights, tmp / WEIGHTS)
    info = {"format": BUNDLE_FORMAT, "complete": False, "step": best.get("step"), "best": best}
    _write_text(tmp / INFO, json.dumps(info, indent=2) + "\n")
    _replace_dir(tmp, folder)


def write_bundle(folder: Path, *, weights: dict[str, torch.Tensor] | Path, component: Component, cfg: RunConfig,
                 lineage: dict[str, dict[str, str]], step: int | None, best: dict[str, Any] | None = None,
                 metrics: dict[str, float] | None = None) -> Path:
    """Write a complete bundle atomically; `weights` is a state dict (aliases dropped) or a safetensors file."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if isinstance(weights, Path):
        shutil.copyfile(weights, tmp / WEIGHTS)
        fsync_path(tmp / WEIGHTS)
    else:
        save_weights(weights, tmp / WEIGHTS)
    state = component.state()
    _write_text(tmp / STATE_JSON, json.dumps({"format": BUNDLE_FORMAT, "meta": state.meta}, indent=1) + "\n")
    with open(tmp / STATE_NPZ, "wb") as f:
        np.savez(f, **state.arrays)
    fsync_path(tmp / STATE_NPZ)
    _write_text(tmp / CONFIG, dump_config(cfg))
    domain = TrainingDomain.fit(component)
    if domain is not None:
        domain.save(tmp / DOMAIN)
    info = {
        "format": BUNDLE_FORMAT, "complete": True, "component": component.name, "step": step, "best": best or {},
        "lineage": lineage, "metrics": metrics or {}, "code_version": code_version(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _write_text(tmp / INFO, json.dumps(info, indent=2) + "\n")
    _replace_dir(tmp, folder)
    return folder


def add_metrics(folder: Path, metrics: dict[str, float]) -> None:
    """Merge the report's metrics into bundle.json (temp + fsync + rename)."""
    path = Path(folder) / INFO
    info = json.loads(path.read_text())
    info["metrics"] = {**info.get("metrics", {}), **{k: float(v) for k, v in metrics.items()}}
    tmp = path.with_name(f".{INFO}.tmp")
    _write_text(tmp, json.dumps(info, indent=2) + "\n")
    tmp.replace(path)
    fsync_path(path.parent)


# -- reading ----------------------------------------------------------------------------------------
@dataclass
class Bundle:
    """A trained model ready to use: its component (state restored), model, config, lineage, domain."""

    path: Path
    component: Component
    model: nn.Module
    config: RunConfig
    info: dict[str, Any]
    domain: TrainingDomain | None
    device: torch.device

    @property
    def lineage(self) -> dict[str, dict[str, str]]:
        return self.info.get("lineage", {})

    @property
    def metrics(self) -> dict[str, float]:
        return self.info.get("metrics", {})

    @property
    def step(self) -> int | None:
        return self.info.get("step")

    def predict(self, table: Any, *, skip_invalid: bool = False) -> Any:
        """Input columns plus predictions; a pyarrow Table or a pandas DataFrame in, the same type out."""
        is_pandas = not isinstance(table, pa.Table)
        arrow = pa.Table.from_pandas(table, preserve_index=False) if is_pandas else table
        outputs, _ = predict_table(self.component, self.model, arrow, self.device, self.domain,
                                   skip_invalid=skip_invalid)
        out = arrow.drop_columns([c for c in outputs.column_names if c in arrow.column_names])
        for name in outputs.column_names:
            out = out.append_column(name, outputs.column(name))
        return out.to_pandas() if is_pandas else out

    def predict_file(self, input_path: str, output_path: str, *, skip_invalid: bool = False,
                     progress: bool = False, options: dict[str, Any] | None = None) -> str:
        """`options`: the component's own predict options (e.g. a spectrum's `samples`, `mask_um`)."""
        unknown = sorted(set(options or {}) - set(self.component.predict_options))
        if unknown:
            allowed = ", ".join(self.component.predict_options) or "none"
            raise DataError(f"component {self.component.name!r} has no predict option {unknown[0]!r} (options: "
                            f"{allowed})")
        merged = {**(options or {}), "skip_invalid": skip_invalid, "domain": self.domain, "progress": progress}
        return self.component.predict_file(self.model, input_path, output_path, self.device, merged)

    def evaluate(self, store: Store, ref: str) -> list[ReportSection]:
        return self.component.evaluate(self.model, store, ref, self.device)


def _read_info(folder: Path) -> dict[str, Any] | None:
    path = folder / INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{path} is not valid JSON; re-export the bundle (`astrobio-train export`)") from None
    if info.get("format") != BUNDLE_FORMAT:
        raise DataError(f"{path}: bundle format {info.get('format')!r}, this trainer reads {BUNDLE_FORMAT}")
    return info


def _download_bundle(remote: RunFolder) -> Path:
    """The local working copy of a complete remote bundle (the folder itself, or a run folder's best/)."""
    for rel in ("", BEST):
        info = f"{rel}/{INFO}" if rel else INFO
        if remote.is_file(info) and json.loads(remote.read_text(info)).get("complete"):
            remote.fetch(rel)
            return remote.scratch / rel if rel else remote.scratch
    raise DataError(f"{remote} holds no complete model bundle ({INFO} or {BEST}/{INFO}); train with "
                    f"`astrobio-train run -c CONFIG --set logging.run_dir=...` first")


def load_bundle(path: str | Path, device: torch.device | str | None = None) -> Bundle:
    """A bundle folder, or a run folder (its best/ bundle; for a run still training, its newest weights with
    the statistics rebuilt from the pinned dataset version). An s3:// bundle or run folder is downloaded first
    (its bundle only: a run on S3 still training is not loaded)."""
    if is_url(str(path)):
        path = _download_bundle(RunFolder(str(path)))
    path = Path(path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    for folder in (path, path / BEST):
        info = _read_info(folder)
        if info is not None and info.get("complete"):
            return _load_folder(folder, info, device)
    if (path / CONFIG).is_file() and not (path / INFO).is_file():
        return _load_unfinished_run(path, device)
    raise DataError(f"{path} is neither a model bundle nor a run folder (no {INFO} or {BEST}/{INFO}); train "
                    f"with `astrobio-train run -c CONFIG` or export one with `astrobio-train export`")


def _load_folder(folder: Path, info: dict[str, Any], device: torch.device) -> Bundle:
    for name in (WEIGHTS, STATE_JSON, STATE_NPZ, CONFIG):
        if not (folder / name).is_file():
            raise DataError(f"bundle {folder} lacks {name}; re-export it (`astrobio-train export`)")
    cfg = load_config(folder / CONFIG)
    component = components.get(info["component"])(cfg)
    meta = json.loads((folder / STATE_JSON).read_text())["meta"]
    with np.load(folder / STATE_NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    component.load_state(ComponentState(meta, arrays))
    component.frozen = True
    model = component.build_model(None)
    load_weights(model, folder / WEIGHTS)
    domain = TrainingDomain.load(folder / DOMAIN) if (folder / DOMAIN).is_file() else None
    return Bundle(folder, component, model.to(device).eval(), cfg, info, domain, device)


def _load_unfinished_run(run_dir: Path, device: torch.device) -> Bundle:
    cfg = load_config(run_dir / CONFIG)
    latest = newest_checkpoint(run_dir)
    lineage = json.loads((latest / TRAINER_STATE).read_text()).get("lineage", {}) if latest else {}
    if lineage.get(cfg.data.dataset):
        cfg.data.dataset = lineage[cfg.data.dataset]  # the version the run trained on, not today's latest
    component = components.get(cfg.component)(cfg)
    data = component.build_data(Store(cfg.data.root))
    model = component.build_model(data)
    best = run_dir / BEST / WEIGHTS
    if best.is_file():
        load_weights(model, best)
    elif latest is not None:
        load_checkpoint_weights(model, latest)
    else:
        raise DataError(f"{run_dir} has neither {BEST}/{WEIGHTS} nor a checkpoint; train it first")
    info = {"format": BUNDLE_FORMAT, "complete": False, "component": cfg.component,
            "lineage": {k: {"version": v} for k, v in data.lineage.items()}, "metrics": {}}
    return Bundle(run_dir, component, model.to(device).eval(), cfg, info, None, device)
