"""Component `planets`: predict planet mass (log10 Earth masses) from radius, orbit and host-star parameters.

Trains and scores only on measured masses: rows whose `pl_bmassprov` is not a measurement (e.g. the
archive's "M-R relationship" fills, or unknown provenance) are excluded, and so are discovery methods whose
masses and radii come from models (imaging, microlensing). The held-out test split compares the model with
the Chen & Kipping (2017) mass-radius relation and a constant baseline, in dex.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from datajobs.errors import DataError
from datajobs.store import Store
from trainer.components.base import (
    Component,
    ComponentData,
    ComponentState,
    InputField,
    ModelConfig,
    ReportSection,
    StepOutput,
)
from trainer.models.mlp import MLP
from trainer.science.mass_radius import log_mass_from_radius

SHARD = "planets.parquet"
# Feature name -> (column, log10 transform)
FEATURES: dict[str, tuple[str, bool]] = {
    "log_radius": ("pl_rade", True),
    "log_period": ("pl_orbper", True),
    "log_insolation": ("pl_insol", True),
    "log_semimajor_axis": ("pl_orbsmax", True),
    "star_teff": ("st_teff", False),
    "log_star_radius": ("st_rad", True),
    "star_mass": ("st_mass", False),
    "star_metallicity": ("st_met", False),
}


class PlanetsModelConfig(ModelConfig):
    hidden: int = Field(64, gt=0)
    layers: int = Field(3, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    features: list[str] = Field(default_factory=lambda: list(FEATURES))
    measured_mass_provenance: list[str] = Field(
        default_factory=lambda: ["Mass", "Msin(i)/sin(i)", "literature (OEC)"],
        description="pl_bmassprov values that are measurements; others (M-R relationship, Msini, unknown) are dropped",
    )
    exclude_discovery_methods: list[str] = Field(default_factory=lambda: ["Imaging", "Microlensing"])
    exclude_catalogue_lists: list[str] = Field(default_factory=lambda: ["Controversial", "Retracted"])
    min_rows: int = Field(100, gt=0, description="fewer usable rows than this stops the run")


def split_of(name: str, seed: int, val: float, test: float) -> str:
    """Stable split by planet name: the same planet always lands in the same split for a seed."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


class PlanetsComponent(Component):
    name = "planets"
    description = "planet mass from radius, orbit and host star (tabular MLP), vs Chen & Kipping 2017"
    model_config_cls = PlanetsModelConfig

    # -- data ----------------------------------------------------------------------------------
    def _select_rows(self, table: pa.Table, ref: str) -> tuple[dict[str, np.ndarray], list[str], str]:
        cfg: PlanetsModelConfig = self.model_cfg
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        n = table.num_rows
        reasons: Counter[str] = Counter()
        keep = []
        for i in range(n):
            mass, radius = cols["pl_bmasse"][i], cols["pl_rade"][i]
            prov = cols["pl_bmassprov"][i]
            method = cols["discoverymethod"][i]
            lists = (cols.get("catalogue_list") or [None] * n)[i] or ""
            if mass is None or radius is None or not (mass > 0 and radius > 0):
                reasons["no positive mass and radius"] += 1
            elif prov is None:
                reasons["mass provenance unknown (pl_bmassprov empty)"] += 1
            elif prov not in cfg.measured_mass_provenance:
                reasons[f"mass provenance {prov!r} is not a measurement"] += 1
            elif method in cfg.exclude_discovery_methods:
                reasons[f"discovery method {method} (model-derived mass/radius)"] += 1
            elif any(tag in lists for tag in cfg.exclude_catalogue_lists):
                reasons["catalogue lists it as controversial or retracted"] += 1
            else:
                keep.append(i)
        card = [f"Rows in `{ref}`: {n}; used: {len(keep)}.", "", "| excluded because | rows |", "|---|---|"]
        card += [f"| {reason} | {count} |" for reason, count in reasons.most_common()]
        if len(keep) < cfg.min_rows:
            top = reasons.most_common(1)[0][0] if reasons else "no rows"
            raise DataError(
                f"{ref}: only {len(keep)} planets have measured masses (most excluded: {top}); publish a version "
                f"with mass provenance (`astrobio-data run nasa-exoplanets` fetches pl_bmassprov live) or use "
                f"data.dataset=exoplanet-catalogue (`astrobio-data run exoplanet-catalogue --from-snapshot`)"
            )
        arrays = {
            col: np.array([np.nan if cols[col][i] is None else cols[col][i] for i in keep], dtype=np.float64)
            for col in {c for c, _ in FEATURES.values()} | {"pl_bmasse"}
        }
        names = [cols["pl_name"][i] for i in keep]
        return arrays, names, "\n".join(card)

    def build_data(self, store: Store) -> ComponentData:
        cfg: PlanetsModelConfig = self.model_cfg
        unknown = [f for f in cfg.features if f not in FEATURES]
        if unknown:
            raise DataError(f"model.features: unknown feature {unknown[0]!r}; choose from {', '.join(FEATURES)}")
        version = store.open(self.cfg.data.dataset)
        table = version.read_table(SHARD)
        missing = [c for c in ("pl_name", "pl_bmasse", "pl_bmassprov", "discoverymethod",
                               *(FEATURES[f][0] for f in cfg.features)) if c not in table.column_names]
        if missing:
            raise DataError(f"{version.ref}/{SHARD} lacks column {missing[0]!r}; re-create it with "
                            f"`{version.fix_command}`")
        arrays, names, card = self._select_rows(table, version.ref)
        split = np.array([split_of(nm, self.cfg.data.split_seed, self.cfg.data.val_fraction,
                                   self.cfg.data.test_fraction) for nm in names])
        train = split == "train"
        inputs = {c: arrays[c] for c in self._input_columns()}
        target = np.log10(arrays["pl_bmasse"])
        if not self.frozen:  # a loaded bundle keeps its training statistics (evaluate on another version)
            self._fit_statistics({c: v[train] for c, v in inputs.items()}, target[train])
        x = self._model_inputs(inputs)
        y = (target - self.target_mean) / self.target_std
        self._held_out = {
            "names": [nm for nm, s in zip(names, split, strict=True) if s == "test"],
            "radius": arrays["pl_rade"][split == "test"],
            "target": target[split == "test"],
            "inputs": {c: v[split == "test"] for c, v in inputs.items()},
        }

        def subset(which: str) -> TensorDataset:
            mask = split == which
            return TensorDataset(torch.tensor(x[mask], dtype=torch.float32),
                                 torch.tensor(y[mask], dtype=torch.float32).unsqueeze(1))

        counts = Counter(split.tolist())
        card += (f"\n\nSplit by planet name (seed {self.cfg.data.split_seed}): train {counts['train']}, "
                 f"val {counts['val']}, test {counts['test']}. Features: {', '.join(cfg.features)}; missing "
                 f"values are imputed with the training median and flagged.")
        return ComponentData(train=subset("train"), val=subset("val"), test=subset("test"),
                             lineage={self.cfg.data.dataset: version.ref}, card=card)

    # -- bundle contract: statistics, state, input schema, predict, training domain ---------------
    INPUTS: ClassVar[dict[str, tuple[str, float | None, bool, str]]] = {
        # column -> (unit, physical minimum, exclusive, description)
        "pl_rade": ("Earth radii", 0.0, True, "planet radius"),
        "pl_orbper": ("days", 0.0, True, "orbital period"),
        "pl_insol": ("Earth insolation", 0.0, True, "insolation flux"),
        "pl_orbsmax": ("au", 0.0, True, "orbit semi-major axis"),
        "st_teff": ("K", 0.0, True, "stellar effective temperature"),
        "st_rad": ("solar radii", 0.0, True, "stellar radius"),
        "st_mass": ("solar masses", 0.0, True, "stellar mass"),
        "st_met": ("dex", None, False, "stellar metallicity [Fe/H]"),
    }
    OUTPUTS = ("pl_bmasse_pred", "pl_bmasse_lo68", "pl_bmasse_hi68", "pl_bmasse_lo95", "pl_bmasse_hi95")

    def _input_columns(self) -> list[str]:
        return [FEATURES[f][0] for f in self.model_cfg.features]

    def _raw_features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([np.log10(inputs[c]) if log else inputs[c] for c, log in
                             (FEATURES[f] for f in self.model_cfg.features)], axis=1)

    def _fit_statistics(self, inputs: dict[str, np.ndarray], target: np.ndarray) -> None:
        """Imputation and scaling from the training split only; a missing value becomes the train median plus
        a 0/1 indicator column, so the model knows it was absent."""
        raw = self._raw_features(inputs)
        self.median = np.nanmedian(raw, axis=0)
        filled = np.where(np.isnan(raw), self.median, raw)
        self.mean, self.std = filled.mean(axis=0), filled.std(axis=0) + 1e-8
        self.target_mean, self.target_std = float(target.mean()), float(target.std())
        self.in_features = 2 * raw.shape[1]
        self._train_inputs = inputs

    def _scaled(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        raw = self._raw_features(inputs)
        missing = np.isnan(raw)
        return (np.where(missing, self.median, raw) - self.mean) / self.std, missing

    def _model_inputs(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        scaled, missing = self._scaled(inputs)
        return np.concatenate([scaled, missing.astype(np.float64)], axis=1)

    def _table_inputs(self, table: pa.Table) -> dict[str, np.ndarray]:
        n = table.num_rows
        return {c: (table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) if c in table.column_names
                    else np.full(n, np.nan)) for c in self._input_columns()}

    def state(self) -> ComponentState:
        meta = {"features": list(self.model_cfg.features), "median": self.median.tolist(),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "target_mean": self.target_mean,
                "target_std": self.target_std, "in_features": self.in_features,
                "target": "log10 pl_bmasse [Earth masses]"}
        return ComponentState(meta, {f"train_{c}": v for c, v in self._train_inputs.items()})

    def load_state(self, state: ComponentState) -> None:
        meta = state.meta
        if meta["features"] != list(self.model_cfg.features):
            raise DataError(f"bundle state has features {meta['features']}, its config {self.model_cfg.features}")
        self.median, self.mean, self.std = (np.array(meta[k], dtype=np.float64) for k in ("median", "mean", "std"))
        self.target_mean, self.target_std = float(meta["target_mean"]), float(meta["target_std"])
        self.in_features = int(meta["in_features"])
        self._train_inputs = {c: state.arrays[f"train_{c}"] for c in self._input_columns()}
        self.frozen = True

    def input_schema(self) -> list[InputField]:
        return [InputField(c, unit, "float", required=c == "pl_rade", minimum=low, exclusive_minimum=excl,
                           description=text) for c in self._input_columns()
                for unit, low, excl, text in [self.INPUTS[c]]]

    def training_inputs(self) -> pa.Table:
        return pa.table({c: pa.array(v, type=pa.float64(), from_pandas=True) for c, v in self._train_inputs.items()})

    def domain_features(self, inputs: pa.Table) -> np.ndarray:
        return self._scaled(self._table_inputs(inputs))[0]

    def predict(self, model: nn.Module, inputs: pa.Table, device: torch.device) -> pa.Table:
        x = torch.tensor(self._model_inputs(self._table_inputs(inputs)), dtype=torch.float32)
        with torch.no_grad():
            pred = model(x.to(device)).float().cpu().numpy()[:, 0] * self.target_std + self.target_mean
        n = inputs.num_rows
        columns = {"pl_bmasse_pred": pa.array(10.0 ** pred.astype(np.float64), type=pa.float64())}
        columns.update({name: pa.nulls(n, pa.float64()) for name in self.OUTPUTS[1:]})  # intervals: planets v2
        return pa.table(columns)

    # -- model and loss ------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        cfg: PlanetsModelConfig = self.model_cfg
        return MLP(self.in_features, 1, cfg.hidden, cfg.layers, cfg.dropout)

    def training_step(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        pred = model(x).float()
        return StepOutput(loss=nn.functional.mse_loss(pred, y), samples=x.shape[0])

    def flops_per_sample(self, model: nn.Module) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters())

    # -- report --------------------------------------------------------------------------------
    @torch.no_grad()
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        model.eval()
        x, _ = data.test.tensors
        pred = model(x.to(device)).float().cpu().numpy()[:, 0] * self.target_std + self.target_mean
        truth = self._held_out["target"]
        chen = log_mass_from_radius(self._held_out["radius"])
        const = np.full_like(truth, self.target_mean)
        small = self._held_out["radius"] < 4.0

        def rmse(p: np.ndarray, mask: np.ndarray | None = None) -> float:
            m = np.ones_like(truth, dtype=bool) if mask is None else mask
            return float(np.sqrt(np.mean((p[m] - truth[m]) ** 2))) if m.any() else float("nan")

        rows = [("this model (MLP)", pred), ("Chen & Kipping 2017 (radius only)", chen),
                ("constant (train mean)", const)]
        lines = ["| predictor | RMSE all [dex] | RMSE R < 4 R⊕ [dex] | RMSE R ≥ 4 R⊕ [dex] |", "|---|---|---|---|"]
        for label, p in rows:
            lines.append(f"| {label} | {rmse(p):.3f} | {rmse(p, small):.3f} | {rmse(p, ~small):.3f} |")
        lines.append(f"\nHeld-out planets: {len(truth)} ({int(small.sum())} with R < 4 R⊕).")
        metrics = {"test_rmse_dex": rmse(pred), "chen_kipping_rmse_dex": rmse(chen), "constant_rmse_dex": rmse(const)}
        return [ReportSection("Held-out evaluation (log10 mass, Earth masses)", "\n".join(lines), metrics)]
