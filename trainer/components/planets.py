"""Component `planets`: predict planet mass (log10 Earth masses) from radius, orbit and host-star parameters.

Trains and scores only on measured masses: rows whose `pl_bmassprov` is not a measurement (e.g. the
archive's "M-R relationship" fills, or unknown provenance) are excluded, and so are discovery methods whose
masses and radii come from models (imaging, microlensing). The held-out test split compares the model with
the Chen & Kipping (2017) mass-radius relation and a constant baseline, in dex.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from datajobs.errors import DataError
from datajobs.store import Store
from trainer.components.base import Component, ComponentData, ModelConfig, ReportSection, StepOutput
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
        raw = np.stack([np.log10(arrays[c]) if log else arrays[c] for c, log in
                        (FEATURES[f] for f in cfg.features)], axis=1)
        target = np.log10(arrays["pl_bmasse"])
        split = np.array([split_of(nm, self.cfg.data.split_seed, self.cfg.data.val_fraction,
                                   self.cfg.data.test_fraction) for nm in names])
        train = split == "train"
        # Imputation and scaling from the training split only; a missing value becomes the train median
        # plus a 0/1 indicator column, so the model knows it was absent.
        median = np.nanmedian(raw[train], axis=0)
        missing_mask = np.isnan(raw)
        filled = np.where(missing_mask, median, raw)
        mean, std = filled[train].mean(axis=0), filled[train].std(axis=0) + 1e-8
        x = np.concatenate([(filled - mean) / std, missing_mask.astype(np.float64)], axis=1)
        self.target_mean, self.target_std = float(target[train].mean()), float(target[train].std())
        y = (target - self.target_mean) / self.target_std
        self.in_features = x.shape[1]
        self._held_out = {
            "names": [nm for nm, s in zip(names, split, strict=True) if s == "test"],
            "radius": arrays["pl_rade"][split == "test"],
            "target": target[split == "test"],
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

    # -- model and loss ------------------------------------------------------------------------
    def build_model(self, data: ComponentData) -> nn.Module:
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
