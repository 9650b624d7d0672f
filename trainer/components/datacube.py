"""Component `datacube`: emulate ExoPlaSim's climate cube of a planet from its parameters (CNN-ViT), vs baselines.

Data: an `exoplasim-sweep` version (runs.parquet, grid.json, runs/<id>.npz). Each run's target is the mean of its
kept months of every variable on every level (2-D variables one channel, 3-D variables one channel per level),
standardised per channel with training-run statistics. Inputs: the planet parameters (FiLM conditioning) and
three forcing fields computed from them -- top-of-atmosphere insolation (diurnal mean for free rotators with
zero obliquity, the day-side cosine pattern around longitude 180 for synchronous rotators), the land mask
(Earth's for land planets, none for aquaplanets) and cos(latitude). The split is by run (sha256 of the run id),
never by month. The report compares held-out runs with nearest neighbour, ridge regression in the parameters,
PCA + Gaussian-process regression (ClimateBench, Watson-Parris et al. 2022) and climlab's seasonal EBM.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import uuid
from typing import Any

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
    check_inputs,
    read_table,
)
from trainer.models.cnn_vit import CNNViT, energy_term, lat_weighted_mse, latitude_weights

STAR_TEFF = {"sun": 5772.0}  # the other shipped spectra: their Wien temperature, recorded per run in the dataset
PARAMS = ("flux", "star_wien_teff", "synchronous", "rotation_period", "pressure", "pco2", "gravity", "radius",
          "aquaplanet")
LOG_PARAMS = {"rotation_period", "pco2"}
REPORT_VARIABLES = ("ts", "tas", "pr", "clt", "rst", "rlut", "sic", "ta", "ua", "hus")


class DatacubeModelConfig(ModelConfig):
    kinds: list[str] = Field(default_factory=lambda: ["sweep"], description="run kinds used (sweep, example)")
    patch: int = Field(4, gt=0)
    dim: int = Field(64, gt=0)
    depth: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    stem: int = Field(16, gt=0)
    energy_weight: float = Field(0.1, ge=0, description="weight of the energy-balance term in the loss")
    energy_scale_wm2: float = Field(10.0, gt=0, description="W m-2 that count as one unit in the energy term")
    min_runs: int = Field(4, gt=0, description="fewer usable runs than this stops the run")
    gp_components: int = Field(5, gt=0, description="PCA components of the PCA + GP baseline")
    learning_curve_steps: int = Field(150, ge=0, description="training steps per learning-curve point (0: none)")
    ebm_baseline: bool = Field(True, description="run climlab's seasonal EBM baseline in the report")


def split_of(run: str, seed: int, val: float, test: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{run}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def forcing_fields(rows: list[dict[str, Any]], lat: np.ndarray, lon: np.ndarray, land: np.ndarray) -> np.ndarray:
    """[N, 3, lat, lon]: insolation / 1000 W m-2, land mask, cos(latitude)."""
    phi = np.deg2rad(lat)[:, None]
    lam = np.deg2rad(lon)[None, :]
    out = np.zeros((len(rows), 3, len(lat), len(lon)), dtype=np.float32)
    for i, r in enumerate(rows):
        if r["synchronous"]:
            ins = r["flux"] * np.clip(np.cos(phi) * np.cos(lam - math.pi), 0, None)
        else:
            ins = r["flux"] * np.cos(phi) / math.pi * np.ones_like(lam)
        out[i, 0] = ins / 1000.0
        out[i, 1] = 0.0 if r["aquaplanet"] else land
        out[i, 2] = np.cos(phi)
    return out


def param_matrix(rows: list[dict[str, Any]]) -> np.ndarray:
    cols = []
    for p in PARAMS:
        v = np.array([float(r[p]) for r in rows], dtype=np.float64)
        cols.append(np.log10(v) if p in LOG_PARAMS else v)
    return np.stack(cols, axis=1)


class DatacubeComponent(Component):
    name = "datacube"
    description = "ExoPlaSim climate cube from planet parameters (CNN-ViT), vs NN, ridge, PCA+GP, climlab EBM"
    model_config_cls = DatacubeModelConfig

    # -- data ----------------------------------------------------------------------------------
    def build_data(self, store: Store) -> ComponentData:
        cfg: DatacubeModelConfig = self.model_cfg
        version = store.open(self.cfg.data.dataset)
        table = version.read_table("runs.parquet").to_pylist()
        grid = version.read_json("grid.json")
        rows = [r for r in table if r["kind"] in cfg.kinds and all(r.get(p) is not None for p in PARAMS)]
        if len(rows) < cfg.min_runs:
            raise DataError(f"{version.ref}: {len(rows)} usable runs of kinds {cfg.kinds} (need {cfg.min_runs}); "
                            f"extend the sweep with `astrobio-data run exoplasim-sweep` or publish the bundled runs "
                            f"with `astrobio-data run exoplasim-sweep --from-snapshot`")
        fields = {}
        for r in rows:
            with np.load(io.BytesIO(version.read_bytes(f"runs/{r['run_id']}.npz")), allow_pickle=False) as z:
                fields[r["run_id"]] = {k: z[k].astype(np.float32) for k in z.files}
        if not self.frozen:
            self.lat, self.lon, self.lev = (np.array(grid[c], dtype=np.float64) for c in ("lat", "lon", "lev"))
            self.units = {k: grid["units"][k] for k in (*grid["variables_2d"], *grid["variables_3d"])}
            self.vars2d, self.vars3d = list(grid["variables_2d"]), list(grid["variables_3d"])
            lands = [fields[r["run_id"]]["lsm"] for r in rows if not r["aquaplanet"] and "lsm" in fields[r["run_id"]]]
            self.land = (lands[0] > 0.5).astype(np.float32) if lands else np.zeros((len(self.lat), len(self.lon)),
                                                                                   np.float32)
        target = np.stack([self._channels(fields[r["run_id"]]) for r in rows])
        split = np.array([split_of(r["run_id"], self.cfg.data.split_seed, self.cfg.data.val_fraction,
                                   self.cfg.data.test_fraction) for r in rows])
        if not (split == "train").any() or not (split == "test").any():
            raise DataError(f"{version.ref}: the split by run left no train or no test run ({len(rows)} runs); "
                            f"change data.split_seed or data.test_fraction, or extend the sweep")
        # few runs: with no validation run the loop validates on the training runs, never on the test runs
        split_val = split == "val" if (split == "val").any() else split == "train"
        raw_params = param_matrix(rows)
        train = split == "train"
        if not self.frozen:
            self.p_mean, self.p_std = raw_params[train].mean(0), raw_params[train].std(0) + 1e-6
            self.c_mean = target[train].mean(axis=(0, 2, 3))
            self.c_std = target[train].std(axis=(0, 2, 3)) + 1e-6 * (np.abs(self.c_mean) + 1e-12)
            self.train_params = raw_params[train]
            self.train_rows = [rows[i] for i in np.flatnonzero(train)]
        x_params = ((raw_params - self.p_mean) / self.p_std).astype(np.float32)
        x_fields = forcing_fields(rows, self.lat, self.lon, self.land)
        y = ((target - self.c_mean[None, :, None, None]) / self.c_std[None, :, None, None]).astype(np.float32)
        w = latitude_weights(torch.tensor(self.lat, dtype=torch.float64)).numpy()
        imbalance = np.array([float(((f["ntr"].mean(0).mean(-1)) * w).sum()) for f in
                              (fields[r["run_id"]] for r in rows)], dtype=np.float32)

        def subset(mask: np.ndarray) -> TensorDataset:
            return TensorDataset(torch.tensor(x_fields[mask]), torch.tensor(x_params[mask]), torch.tensor(y[mask]),
                                 torch.tensor(imbalance[mask]))

        self._eval = {"rows": rows, "split": split, "target": target, "x_fields": x_fields, "x_params": x_params,
                      "imbalance": imbalance, "ref": version.ref}
        counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
        card = (f"Runs in `{version.ref}` of kinds {cfg.kinds}: {len(rows)} (of {len(table)}). Split by run id "
                f"(seed {self.cfg.data.split_seed}): {counts}; never by month. Target: the mean of each run's kept "
                f"months, {target.shape[1]} channels on a {len(self.lat)} x {len(self.lon)} grid."
                + ("" if (split == "val").any() else " No validation run: the loop validates on the training runs."))
        return ComponentData(train=subset(train), val=subset(split_val), test=subset(split == "test"),
                             lineage={self.cfg.data.dataset: version.ref}, card=card)

    def _channels(self, f: dict[str, np.ndarray]) -> np.ndarray:
        parts = [f[v].mean(0)[None] for v in self.vars2d] + [f[v].mean(0) for v in self.vars3d]
        return np.concatenate(parts, axis=0)

    def channel_names(self) -> list[tuple[str, int | None]]:
        return [(v, None) for v in self.vars2d] + [(v, k) for v in self.vars3d for k in range(len(self.lev))]

    def channel_index(self, var: str, level: int | None = None) -> int:
        return self.channel_names().index((var, level))

    # -- model and loss ------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        cfg: DatacubeModelConfig = self.model_cfg
        return CNNViT(3, len(PARAMS), len(self.c_mean), len(self.lat), len(self.lon), patch=cfg.patch, dim=cfg.dim,
                      depth=cfg.depth, heads=cfg.heads, stem=cfg.stem)

    def _losses(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        fields, params, y, imbalance = batch
        pred = model(fields, params).float()
        w = latitude_weights(torch.tensor(self.lat, dtype=torch.float64)).to(pred.device, torch.float32)
        mse = lat_weighted_mse(pred, y, w)
        i_sw, i_lw = self.channel_index("rst"), self.channel_index("rlut")
        mean = torch.tensor(self.c_mean, dtype=torch.float32, device=pred.device)
        std = torch.tensor(self.c_std, dtype=torch.float32, device=pred.device)
        sw = pred[:, i_sw] * std[i_sw] + mean[i_sw]
        lw = pred[:, i_lw] * std[i_lw] + mean[i_lw]
        energy = energy_term(sw, lw, imbalance.float(), w, self.model_cfg.energy_scale_wm2)
        return mse, energy, fields.shape[0]

    def training_step(self, model: nn.Module, batch) -> StepOutput:
        mse, energy, n = self._losses(model, batch)
        return StepOutput(loss=mse + self.model_cfg.energy_weight * energy, samples=n)

    def flops_per_sample(self, model: nn.Module) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters()) * (len(self.lat) * len(self.lon)) / 16

    # -- bundle state --------------------------------------------------------------------------
    def state(self) -> ComponentState:
        meta = {"vars2d": self.vars2d, "vars3d": self.vars3d, "units": self.units, "params": list(PARAMS),
                "log_params": sorted(LOG_PARAMS), "star_teff": self.star_teff(),
                "train_runs": [r["run_id"] for r in self.train_rows]}
        arrays = {"lat": self.lat, "lon": self.lon, "lev": self.lev, "land": self.land, "p_mean": self.p_mean,
                  "p_std": self.p_std, "c_mean": self.c_mean, "c_std": self.c_std, "train_params": self.train_params}
        return ComponentState(meta, arrays)

    def load_state(self, state: ComponentState) -> None:
        m, a = state.meta, state.arrays
        if list(m["params"]) != list(PARAMS):
            raise DataError(f"bundle state has parameters {m['params']}, this code {list(PARAMS)}")
        self.vars2d, self.vars3d, self.units = list(m["vars2d"]), list(m["vars3d"]), dict(m["units"])
        self._star_teff = {k: float(v) for k, v in m["star_teff"].items()}
        self.lat, self.lon, self.lev, self.land = a["lat"], a["lon"], a["lev"], a["land"]
        self.p_mean, self.p_std, self.c_mean, self.c_std = a["p_mean"], a["p_std"], a["c_mean"], a["c_std"]
        self.train_params = a["train_params"]
        self.train_rows = [{"run_id": r} for r in m["train_runs"]]
        self.frozen = True

    def star_teff(self) -> dict[str, float]:
        if getattr(self, "_star_teff", None) is None:
            self._star_teff = dict(STAR_TEFF)
            for r in self.train_rows:
                self._star_teff[r["star"]] = float(r["star_wien_teff"])
        return self._star_teff

    # -- predict -------------------------------------------------------------------------------
    def input_schema(self) -> list[InputField]:
        return [
            InputField("flux", "W m-2", "float", minimum=0, exclusive_minimum=True, description="stellar flux"),
            InputField("star", "", "str", description=f"spectrum: {', '.join(sorted(self.star_teff()))}"),
            InputField("synchronous", "", "bool", description="tidally locked (substellar longitude 180)"),
            InputField("rotation_period", "days", "float", minimum=0, exclusive_minimum=True),
            InputField("pressure", "bar", "float", minimum=0, exclusive_minimum=True),
            InputField("pco2", "bar", "float", minimum=0, exclusive_minimum=True),
            InputField("gravity", "m s-2", "float", minimum=0, exclusive_minimum=True),
            InputField("radius", "Earth radii", "float", minimum=0, exclusive_minimum=True),
            InputField("aquaplanet", "", "bool", description="ocean everywhere (else Earth's continents)"),
        ]

    def _rows_of(self, table: pa.Table) -> list[dict[str, Any]]:
        rows = table.to_pylist()
        teff = self.star_teff()
        for i, r in enumerate(rows, start=1):
            if r["star"] not in teff:
                from trainer.components.base import InvalidInput

                raise InvalidInput([(i, "star", r["star"], f"unknown spectrum; trained on {sorted(teff)}")])
            r["star_wien_teff"] = teff[r["star"]]
        return rows

    def domain_features(self, inputs: pa.Table) -> np.ndarray:
        return (param_matrix(self._rows_of(inputs)) - self.p_mean) / self.p_std

    @torch.no_grad()
    def predict_cubes(self, model: nn.Module, rows: list[dict[str, Any]], device: torch.device) -> np.ndarray:
        """Physical-unit channels [N, C, lat, lon] for parameter rows."""
        model.eval()
        params = torch.tensor((param_matrix(rows) - self.p_mean) / self.p_std, dtype=torch.float32, device=device)
        fields = torch.tensor(forcing_fields(rows, self.lat, self.lon, self.land), device=device)
        out = model(fields, params).float().cpu().numpy()
        return out * self.c_std[None, :, None, None] + self.c_mean[None, :, None, None]

    def to_dataset(self, cubes: np.ndarray, rows: list[dict[str, Any]]):
        import xarray as xr

        n_lev = len(self.lev)
        data_vars = {}
        for i, v in enumerate(self.vars2d):
            data_vars[v] = (("planet", "lat", "lon"), cubes[:, i].astype(np.float32), {"units": self.units[v]})
        base = len(self.vars2d)
        for j, v in enumerate(self.vars3d):
            sl = cubes[:, base + j * n_lev: base + (j + 1) * n_lev]
            data_vars[v] = (("planet", "lev", "lat", "lon"), sl.astype(np.float32), {"units": self.units[v]})
        coords: dict[str, Any] = {"planet": np.arange(len(rows)),
                                  "lat": ("lat", self.lat, {"units": "degrees_north"}),
                                  "lon": ("lon", self.lon, {"units": "degrees_east"}),
                                  "lev": ("lev", self.lev, {"units": "1", "long_name": "sigma"})}
        for p in self.input_schema():
            values = [r[p.name] for r in rows]
            coords[p.name] = ("planet", np.array(values, dtype=object if p.dtype == "str" else None), {"units": p.unit})
        return xr.Dataset(data_vars, coords=coords, attrs={
            "title": "CNN-ViT emulation of ExoPlaSim 3.4.2 T21 climates (mean of the kept months)",
            "source": "astrobio-train datacube component"})

    def predict_file(self, model: nn.Module, input_path: str, output_path: str, device: torch.device,
                     options: dict[str, Any]) -> str:
        """Parameters table (CSV/parquet/JSONL) in -> one netCDF cube (planet, lev, lat, lon) out."""
        if output_path == "-" or not output_path.endswith(".nc"):
            raise DataError(f"datacube predict writes netCDF: give an output path ending in .nc, not {output_path!r}")
        rows = self._rows_of(check_inputs(self.input_schema(), read_table(input_path)))
        ds = self.to_dataset(self.predict_cubes(model, rows, device), rows)
        tmp = f"{output_path}.tmp-{uuid.uuid4().hex}"
        ds.to_netcdf(tmp, engine="netcdf4")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, output_path)
        return f"predicted {len(rows)} planet cube(s) into {output_path}"

    # -- report --------------------------------------------------------------------------------
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        from trainer.components import datacube_eval

        return datacube_eval.report(self, model, device)
