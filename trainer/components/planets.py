"""Component `planets`: planet mass (log10 Earth masses, with an interval) from radius, orbit and host star.

Trains and scores only on planets whose radius and mass are both measurements: the radius from a transit
(`tran_flag` where the source has it, else a transit discovery) and the mass of measured provenance
(`pl_bmassprov`; not M sin i alone, not a mass-radius fill). The model (trainer/models/mass_model.py) is an
ensemble of heteroscedastic Gaussians over log10 mass that corrects the Chen & Kipping (2017, ApJ 834, 17)
relation by a bounded amount inside the training domain and returns to it outside. The evaluation
(trainer/components/planets_eval.py) compares it with that relation and a constant baseline on random,
period-extrapolation and time-forward splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
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
from trainer.models.mass_model import (
    CentralIntervalCalibration,
    MassModel,
    gaussian_nll,
    mixture_cdf,
    mixture_quantiles,
)
from trainer.science.mass_radius import log_mass_posterior

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
# Chen & Kipping anchor tabulated on log10 R over the radii the data jobs publish (0.1-30 Earth radii).
ANCHOR_LOG_R = (-1.0, float(np.log10(30.0)))
ANCHOR_GRID = 500


class PlanetsModelConfig(ModelConfig):
    hidden: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    members: int = Field(5, gt=0, description="ensemble members (independent init and bootstrap weights)")
    max_correction_dex: float = Field(1.0, gt=0, description="bound of the correction to Chen & Kipping [dex]")
    max_log_sigma_factor: float = Field(1.0, gt=0, description="the scatter may be C&K's times e^[-S, S]")
    neighbours: int = Field(5, gt=0, description="k of the kNN distance that gates the correction")
    domain_quantile: float = Field(0.95, gt=0, lt=1, description="training kNN-distance quantile where the gate "
                                   "starts to close")
    gate_width: float = Field(0.5, gt=0, description="gate falls by e^-1 this fraction of the radius beyond it")
    features: list[str] = Field(default_factory=lambda: list(FEATURES))
    measured_mass_provenance: list[str] = Field(
        default_factory=lambda: ["Mass", "Msin(i)/sin(i)", "literature (OEC)"],
        description="pl_bmassprov values that are measurements; others (M-R relationship, Msini, unknown) are dropped",
    )
    transit_methods: list[str] = Field(
        default_factory=lambda: ["Transit"],
        description="discovery methods whose radius is a transit measurement (used where tran_flag is null)",
    )
    exclude_catalogue_lists: list[str] = Field(default_factory=lambda: ["Controversial", "Retracted"])
    min_rows: int = Field(100, gt=0, description="fewer usable rows than this stops training (evaluating a trained "
                          "bundle on another version needs 20)")
    protocol_evaluation: bool = Field(True, description="re-train and score the random-seed, period and time splits "
                                      "in the report (false: score this run's test split only)")
    eval_split_seeds: int = Field(5, gt=1, description="random splits re-trained in the evaluation")
    eval_holdout_fraction: float = Field(0.2, gt=0, lt=1, description="share held out by period and by year")


EVALUATE_MIN_ROWS = 20  # a frozen bundle fits nothing on the rows it scores: fewer rows only widen its error bars


def split_of(name: str, seed: int, val: float, test: float) -> str:
    """Stable split by planet name: the same planet always lands in the same split for a seed."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


@dataclass
class Rows:
    """The usable planets: raw feature columns, log10 mass and its measurement error (0 where unknown)."""

    names: list[str]
    raw: np.ndarray  # (N, F) features after the log transforms, NaN where missing
    radius: np.ndarray  # Earth radii
    log_mass: np.ndarray
    log_mass_err: np.ndarray
    period: np.ndarray  # days, NaN where missing
    year: np.ndarray  # discovery year, NaN where missing
    inputs: dict[str, np.ndarray]  # the input columns as published (NaN where missing)

    def take(self, mask: np.ndarray) -> Rows:
        return Rows([n for n, m in zip(self.names, mask, strict=True) if m], self.raw[mask], self.radius[mask],
                    self.log_mass[mask], self.log_mass_err[mask], self.period[mask], self.year[mask],
                    {c: v[mask] for c, v in self.inputs.items()})


@dataclass
class Scaling:
    """Imputation and scaling fitted on training rows; missing values -> train median plus a 0/1 indicator."""

    median: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, raw: np.ndarray) -> Scaling:
        median = np.nanmedian(raw, axis=0)
        filled = np.where(np.isnan(raw), median, raw)
        return cls(median, filled.mean(axis=0), filled.std(axis=0) + 1e-8)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """(N, 2F): the scaled features (the domain features, first) and the missing-value indicators."""
        missing = np.isnan(raw)
        filled = np.where(missing, self.median, raw)
        return np.concatenate([(filled - self.mean) / self.std, missing.astype(np.float64)], axis=1)


def knn_distance(points: np.ndarray, reference: np.ndarray, k: int, leave_one_out: bool = False) -> np.ndarray:
    """Mean distance of each point to its k nearest reference points (skipping itself with leave_one_out)."""
    d = np.sqrt(((points[:, None, :] - reference[None, :, :]) ** 2).sum(axis=2))
    d = np.sort(d, axis=1)[:, 1 if leave_one_out else 0:]
    return d[:, : min(k, d.shape[1])].mean(axis=1)


def anchor_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Chen & Kipping posterior median and spread of log10 M on the anchor's log-radius grid."""
    log_r = np.linspace(*ANCHOR_LOG_R, ANCHOR_GRID)
    mu, sigma = log_mass_posterior(10**log_r)
    return torch.tensor(mu, dtype=torch.float32), torch.tensor(sigma, dtype=torch.float32)


def tensors(rows: Rows, scaling: Scaling, weights: np.ndarray) -> TensorDataset:
    """(x, log10 R, log10 M, its error, bootstrap weights per member) as float32 tensors."""
    arrays = [scaling.transform(rows.raw), np.log10(rows.radius), rows.log_mass, rows.log_mass_err, weights]
    return TensorDataset(*(torch.tensor(a, dtype=torch.float32) for a in arrays))


def bootstrap_weights(n: int, members: int, seed: int) -> np.ndarray:
    """Poisson(1) counts per row and member: each member sees its own bootstrap resample of the rows."""
    return np.random.default_rng(seed).poisson(1.0, size=(n, members)).astype(np.float64)


def build_mass_model(cfg: PlanetsModelConfig, scaling: Scaling, train_x: np.ndarray) -> MassModel:
    """The ensemble, with the training rows as the domain reference for the gate."""
    reference = train_x[:, : len(cfg.features)]
    distances = knn_distance(reference, reference, cfg.neighbours, leave_one_out=True)
    radius = float(np.quantile(distances, cfg.domain_quantile))
    mu, sigma = anchor_tables()
    return MassModel(train_x.shape[1], cfg.hidden, cfg.layers, cfg.members, reference=torch.tensor(reference),
                     domain_radius=radius, anchor_log_r=ANCHOR_LOG_R, anchor_mu=mu, anchor_sigma=sigma,
                     max_correction_dex=cfg.max_correction_dex, neighbours=cfg.neighbours, dropout=cfg.dropout,
                     gate_width=cfg.gate_width, max_log_sigma_factor=cfg.max_log_sigma_factor)


@torch.no_grad()
def predict_members(model: nn.Module, x: np.ndarray, log_r: np.ndarray, device: torch.device,
                    chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each member's mean and spread of log10 M, (N, K) each, for scaled features x."""
    model.eval()
    mus, sigmas = [], []
    for i in range(0, len(x), chunk):
        mu, sigma = model(torch.tensor(x[i:i + chunk], dtype=torch.float32, device=device),
                          torch.tensor(log_r[i:i + chunk], dtype=torch.float32, device=device))
        mus.append(mu.cpu().numpy())
        sigmas.append(sigma.cpu().numpy())
    return np.concatenate(mus).astype(np.float64), np.concatenate(sigmas).astype(np.float64)


def validation_calibration(model: nn.Module, scaling: Scaling, val: Rows,
                           device: torch.device) -> CentralIntervalCalibration:
    """Interval recalibration from the validation rows' PIT (the measurement error widens every member)."""
    mu, sigma = predict_members(model, scaling.transform(val.raw), np.log10(val.radius), device)
    total = np.sqrt(sigma**2 + val.log_mass_err[:, None] ** 2)
    pit = mixture_cdf(torch.tensor(val.log_mass), torch.tensor(mu), torch.tensor(total)).numpy()
    return CentralIntervalCalibration.from_pit(pit)


class PlanetsComponent(Component):
    name = "planets"
    description = "planet mass with intervals from radius, orbit and host star (ensemble anchored to Chen & Kipping)"
    model_config_cls = PlanetsModelConfig

    # -- data ----------------------------------------------------------------------------------
    def _select_rows(self, table: pa.Table, ref: str) -> tuple[Rows, str]:
        cfg: PlanetsModelConfig = self.model_cfg
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        n = table.num_rows
        empty = [None] * n
        reasons: Counter[str] = Counter()
        keep = []
        for i in range(n):
            mass, radius = cols["pl_bmasse"][i], cols["pl_rade"][i]
            prov = cols["pl_bmassprov"][i]
            transit = (cols.get("tran_flag") or empty)[i]
            method = cols["discoverymethod"][i]
            lists = (cols.get("catalogue_list") or empty)[i] or ""
            if mass is None or radius is None or not (mass > 0 and radius > 0):
                reasons["no positive mass and radius"] += 1
            elif prov is None:
                reasons["mass provenance unknown (pl_bmassprov empty)"] += 1
            elif prov not in cfg.measured_mass_provenance:
                reasons[f"mass provenance {prov!r} is not a measurement"] += 1
            elif transit == 0:
                reasons["radius not a transit measurement (tran_flag = 0)"] += 1
            elif transit is None and method not in cfg.transit_methods:
                reasons[f"radius not a transit measurement (no tran_flag; discovered by {method or 'unknown'})"] += 1
            elif any(tag in lists for tag in cfg.exclude_catalogue_lists):
                reasons["catalogue lists it as controversial or retracted"] += 1
            else:
                keep.append(i)
        card = [f"Rows in `{ref}`: {n}; used: {len(keep)} (measured transit radius and measured mass).", "",
                "| excluded because (first rule that applies, in this order) | rows |", "|---|---|"]
        card += [f"| {reason} | {count} |" for reason, count in reasons.most_common()]
        if len(keep) < (min(cfg.min_rows, EVALUATE_MIN_ROWS) if self.frozen else cfg.min_rows):
            top = reasons.most_common(1)[0][0] if reasons else "no rows"
            raise DataError(
                f"{ref}: only {len(keep)} planets have measured masses and transit radii (most excluded: {top}); "
                f"publish a version with mass provenance (`astrobio-data run nasa-exoplanets` fetches pl_bmassprov "
                f"and tran_flag live) or use data.dataset=exoplanet-catalogue "
                f"(`astrobio-data run exoplanet-catalogue --from-snapshot`)"
            )

        def column(name: str) -> np.ndarray:
            values = cols.get(name) or empty
            return np.array([np.nan if values[i] is None else values[i] for i in keep], dtype=np.float64)

        inputs = {c: column(c) for c in self._input_columns()}
        raw = self._raw_features(inputs)
        mass = column("pl_bmasse")
        # Measurement error in dex: the mean of the two one-sided errors, divided by M ln 10.
        err = (np.abs(column("pl_bmasseerr1")) + np.abs(column("pl_bmasseerr2"))) / 2 / (mass * np.log(10))
        with_err = int(np.isfinite(err).sum())
        card.append(f"\nMass uncertainties known for {with_err} of {len(keep)} used planets (used in the "
                    f"likelihood; 0 elsewhere).")
        rows = Rows([cols["pl_name"][i] for i in keep], raw, column("pl_rade"), np.log10(mass),
                    np.nan_to_num(err, nan=0.0), column("pl_orbper"), column("disc_year"), inputs)
        return rows, "\n".join(card)

    def build_data(self, store: Store) -> ComponentData:
        cfg: PlanetsModelConfig = self.model_cfg
        unknown = [f for f in cfg.features if f not in FEATURES]
        if unknown:
            raise DataError(f"model.features: unknown feature {unknown[0]!r}; choose from {', '.join(FEATURES)}")
        if "log_radius" not in cfg.features:
            raise DataError("model.features must include log_radius: the model corrects a mass-radius relation")
        version = store.open(self.cfg.data.dataset)
        table = version.read_table(SHARD)
        missing = [c for c in ("pl_name", "pl_bmasse", "pl_bmassprov", "discoverymethod", "pl_orbper", "disc_year",
                               *(FEATURES[f][0] for f in cfg.features)) if c not in table.column_names]
        if missing:
            raise DataError(f"{version.ref}/{SHARD} lacks column {missing[0]!r}; re-create it with "
                            f"`{version.fix_command}`")
        rows, card = self._select_rows(table, version.ref)
        split = np.array([split_of(nm, self.cfg.data.split_seed, self.cfg.data.val_fraction,
                                   self.cfg.data.test_fraction) for nm in rows.names])
        self.rows = rows
        self.split = split
        if not self.frozen:  # a loaded bundle keeps its training statistics (evaluate on another version)
            self._set_training(rows.take(split == "train").inputs)
        self.held_out = rows.take(split == "test")
        weights = bootstrap_weights(int((split == "train").sum()), cfg.members, self.cfg.train.seed)

        def subset(which: str) -> TensorDataset:
            mask = split == which
            w = weights if which == "train" else np.ones((int(mask.sum()), cfg.members))
            return tensors(rows.take(mask), self.scaling, w)

        counts = Counter(split.tolist())
        card += (f"\n\nSplit by planet name (seed {self.cfg.data.split_seed}): train {counts['train']}, "
                 f"val {counts['val']}, test {counts['test']}. Features: {', '.join(cfg.features)}; missing "
                 f"values are imputed with the training median and flagged.")
        return ComponentData(train=subset("train"), val=subset("val"), test=subset("test"),
                             lineage={self.cfg.data.dataset: version.ref}, card=card)

    # -- bundle contract: state, input schema, predict, training domain --------------------------
    INPUTS: ClassVar[dict[str, tuple[str, float | None, float | None, str]]] = {
        # column -> (unit, physical minimum (exclusive), maximum, description)
        "pl_rade": ("Earth radii", 0.0, 30.0, "planet radius (the data jobs quarantine radii above 30)"),
        "pl_orbper": ("days", 0.0, None, "orbital period"),
        "pl_insol": ("Earth insolation", 0.0, None, "insolation flux"),
        "pl_orbsmax": ("au", 0.0, None, "orbit semi-major axis"),
        "st_teff": ("K", 0.0, None, "stellar effective temperature"),
        "st_rad": ("solar radii", 0.0, None, "stellar radius"),
        "st_mass": ("solar masses", 0.0, None, "stellar mass"),
        "st_met": ("dex", None, None, "stellar metallicity [Fe/H]"),
    }
    OUTPUTS = ("pl_bmasse_pred", "pl_bmasse_lo68", "pl_bmasse_hi68", "pl_bmasse_lo95", "pl_bmasse_hi95")
    INTERVALS = (0.68, 0.95)  # central intervals, in OUTPUTS order after the median

    def quantile_levels(self) -> list[float]:
        """The mixture quantiles behind OUTPUTS: the median, then each interval's recalibrated bounds."""
        levels = [0.5]
        for coverage in self.INTERVALS:
            half = self.calibration.mixture_level(coverage) / 2
            levels += [0.5 - half, 0.5 + half]
        return levels

    def calibrate(self, model: nn.Module, data: ComponentData, device: torch.device) -> None:
        """Recalibrate the central intervals on the validation planets (never on the test split)."""
        self.calibration = validation_calibration(model, self.scaling, self.rows.take(self.split == "val"), device)

    def _input_columns(self) -> list[str]:
        return [FEATURES[f][0] for f in self.model_cfg.features]

    def _raw_features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([np.log10(inputs[c]) if log else inputs[c] for c, log in
                             (FEATURES[f] for f in self.model_cfg.features)], axis=1)

    def _set_training(self, inputs: dict[str, np.ndarray]) -> None:
        """Scaling and the domain reference from the training rows' inputs."""
        raw = self._raw_features(inputs)
        self.scaling = Scaling.fit(raw)
        self.train_x = self.scaling.transform(raw)
        self._train_inputs = inputs

    def _table_inputs(self, table: pa.Table) -> dict[str, np.ndarray]:
        n = table.num_rows
        return {c: (table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) if c in table.column_names
                    else np.full(n, np.nan)) for c in self._input_columns()}

    def state(self) -> ComponentState:
        meta = {"features": list(self.model_cfg.features), "median": self.scaling.median.tolist(),
                "mean": self.scaling.mean.tolist(), "std": self.scaling.std.tolist(),
                "target": "log10 pl_bmasse [Earth masses]; anchor: Chen & Kipping (2017, ApJ 834, 17)"}
        arrays = {f"train_{c}": v for c, v in self._train_inputs.items()}
        return ComponentState(meta, arrays | {"calibration_levels": self.calibration.levels})

    def load_state(self, state: ComponentState) -> None:
        meta = state.meta
        if meta["features"] != list(self.model_cfg.features):
            raise DataError(f"bundle state has features {meta['features']}, its config {self.model_cfg.features}")
        self._train_inputs = {c: np.asarray(state.arrays[f"train_{c}"], dtype=np.float64)
                              for c in self._input_columns()}
        self.scaling = Scaling(*(np.array(meta[k], dtype=np.float64) for k in ("median", "mean", "std")))
        self.train_x = self.scaling.transform(self._raw_features(self._train_inputs))
        if "calibration_levels" not in state.arrays:
            raise DataError("bundle state has no interval calibration (written before it existed); retrain it with "
                            "`astrobio-train run -c configs/planets.yaml`")
        self.calibration = CentralIntervalCalibration(state.arrays["calibration_levels"])
        self.frozen = True

    def input_schema(self) -> list[InputField]:
        return [InputField(c, unit, "float", required=c == "pl_rade", minimum=low, maximum=high,
                           exclusive_minimum=low is not None, description=text)
                for c in self._input_columns() for unit, low, high, text in [self.INPUTS[c]]]

    def training_inputs(self) -> pa.Table:
        return pa.table({c: pa.array(v, type=pa.float64(), from_pandas=True) for c, v in self._train_inputs.items()})

    def domain_features(self, inputs: pa.Table) -> np.ndarray:
        """The scaled, median-filled features: the same space as the model's own domain gate."""
        return self.scaling.transform(self._raw_features(self._table_inputs(inputs)))[:, : len(self.model_cfg.features)]

    def predict(self, model: nn.Module, inputs: pa.Table, device: torch.device) -> pa.Table:
        """Median of the predictive mixture (ensemble spread included) and its 68%/95% central intervals,
        recalibrated on the validation split."""
        values = self._table_inputs(inputs)
        mu, sigma = predict_members(model, self.scaling.transform(self._raw_features(values)),
                                    np.log10(values["pl_rade"]), device)
        q = mixture_quantiles(torch.tensor(mu), torch.tensor(sigma), self.quantile_levels()).numpy()
        return pa.table({name: pa.array(10.0 ** q[:, i], type=pa.float64()) for i, name in enumerate(self.OUTPUTS)})

    # -- model and loss ------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        return build_mass_model(self.model_cfg, self.scaling, self.train_x)

    def training_step(self, model: nn.Module, batch) -> StepOutput:
        x, log_r, y, y_err, weights = batch
        mu, sigma = model(x, log_r)
        return StepOutput(loss=gaussian_nll(mu, sigma, y, y_err, weights), samples=x.shape[0])

    def flops_per_sample(self, model: nn.Module) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters())

    # -- report --------------------------------------------------------------------------------
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        from trainer.components.planets_eval import evaluate

        # Figures go into the training run's folder; `evaluate` of a loaded bundle (frozen) must not overwrite them.
        run_dir = None if self.frozen else Path(self.cfg.logging.run_dir) / self.cfg.run_name
        return evaluate(self, model, device, run_dir, protocol=self.model_cfg.protocol_evaluation)
