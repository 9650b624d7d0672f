"""Component `spectrum`: posterior over atmosphere parameters from a transmission spectrum (CNN + conditional flow).

Trains on a `spectra-sim` (or `spectra-grid`) dataset: per bin the scaled depth, the scaled 1-sigma error and
an observed/missing mask; targets are the simulation parameters mapped from their uniform prior box to the real
line (probit), so posterior samples always lie inside the prior. Held-out evaluation: per-parameter R^2 of the
posterior mean (HELA, Marquez-Neila et al. 2018; plan-net, Cobb et al. 2019) and the coverage of the central 68%
and 95% intervals. `predict` reads a spectrum table and writes a posterior summary and its samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from pydantic import Field
from scipy.special import ndtr, ndtri
from torch import nn
from torch.utils.data import TensorDataset

from datajobs.errors import DataError
from datajobs.sources.spectra_sim import planet_from_record
from datajobs.store import Store, write_local_atomic
from trainer.components.base import (
    Component,
    ComponentData,
    ComponentState,
    InputField,
    ModelConfig,
    ReportSection,
    StepOutput,
)
from trainer.components.spectrum_importance import ImportanceResult, importance_posterior, latent_prior_log_density
from trainer.models.retrieval import FlowName, RetrievalEnsemble, RetrievalModel
from trainer.spectrum_likelihood import SpectrumLikelihood

NumberT = TypeVar("NumberT", int, float)


class SpectrumModelConfig(ModelConfig):
    channels: int = Field(32, gt=0, description="CNN channels")
    context: int = Field(64, gt=0, description="encoder output width (flow conditioning)")
    flow: FlowName = Field(
        "affine", description="affine: RealNVP couplings; spline-*: rational-quadratic spline transforms (zuko "
        "NSF), coupling (fast sampling) or autoregressive")
    hidden: int = Field(128, gt=0, description="width of the networks that set each flow layer")
    flow_layers: int = Field(6, gt=0, description="flow layers (coupling or spline transforms)")
    spline_bins: int = Field(8, gt=1, description="spline segments per parameter (spline flows)")
    members: int = Field(1, gt=0, description="independently initialised networks trained side by side; the "
                         "posterior is their equal-weight mixture (a deep ensemble); each member costs one "
                         "network's training and sampling time")
    posterior_samples: int = Field(1000, gt=0, description="samples per spectrum in report and predict")
    report_spectra: int = Field(500, gt=0, description="held-out spectra scored in the report (at most)")
    min_rows: int = Field(200, gt=0, description="fewer spectra than this stops the run")
    resample_noise: bool = Field(True, description="train on the noise-free depths (`depth_true`) plus a fresh "
                                 "Gaussian draw from the error bars at every step; validation and test keep the "
                                 "stored noisy spectra")
    noise_scale_max: float = Field(1.0, ge=1.0, description="with resample_noise, each training spectrum's "
                                   "error bars (input and noise draw) are multiplied by a factor drawn uniformly "
                                   "from [1, noise_scale_max], so the model also serves spectra whose error bars "
                                   "were inflated (predict --option error_scale=F); 1 = the simulated error bars")
    predict_mask_um: str = Field("3.9-4.2", description="wavelength ranges predict ignores by default "
                                 "('lo-hi,...'; SO2 at 4.05 um is not in the forward model); '' = none")


# bundle input format: 2 = one global depth scale + level/relative split in the encoder (2026-12-03)
INPUT_FORMAT = 2


def split_of(index: int, seed: int, val: float, test: float) -> str:
    u = int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "val" if u < test + val else "train"


def _number(options: dict[str, Any], key: str, kind: type[NumberT], default: NumberT) -> NumberT:
    """A numeric predict option (given as text on the command line); a bad or non-positive one is one line."""
    raw = options.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise DataError(f"predict option {key}={raw!r} is not {'an integer' if kind is int else 'a number'}") from None
    if key != "seed" and not value > 0:
        raise DataError(f"predict option {key} must be > 0, not {raw!r}")
    return value


def _npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class SpectrumComponent(Component):
    name = "spectrum"
    description = "atmospheric retrieval: transmission spectrum -> posterior (CNN + normalizing flow, or a mixture)"
    model_config_cls = SpectrumModelConfig
    predict_options = ("samples", "seed", "mask_um", "error_scale", "importance")
    simulator: dict[str, Any] | None = None

    # -- inputs <-> model space ----------------------------------------------------------------
    def features(self, depth: np.ndarray, error: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(n, bins) depth/error/mask -> (n, 3, bins) float32 network input."""
        m = mask.astype(np.float32)
        x = np.where(mask, (depth - self.depth_mean) / self.depth_std, 0.0)
        e = np.where(mask, error / self.depth_std, 0.0)
        return np.stack([x * m, e * m, m], axis=1).astype(np.float32)

    # The prior box maps to the real line by the probit (inverse normal CDF): the uniform prior becomes the
    # flow's standard-normal base, so an uninformative posterior is the identity flow. (A logit map, used before
    # 2026-12-03, makes it a logistic with exponential tails, which an affine flow on a Gaussian base cannot
    # reach: the 95% interval of an unconstrained parameter came out too narrow, coverage 0.74.)
    def to_latent(self, params: np.ndarray) -> np.ndarray:
        u = np.clip((params - self.lo) / (self.hi - self.lo), 1e-6, 1 - 1e-6)
        return ndtri(u).astype(np.float32)

    def from_latent(self, z: np.ndarray) -> np.ndarray:
        return self.lo + (self.hi - self.lo) * ndtr(z)

    # -- data ----------------------------------------------------------------------------------
    def build_data(self, store: Store) -> ComponentData:
        cfg: SpectrumModelConfig = self.model_cfg
        version = store.open(self.cfg.data.dataset)
        shards = sorted(s for s in version.shards("npz") if s.startswith("spectra-"))
        if not shards or "bins.npz" not in version.shards("npz"):
            raise DataError(f"{version.ref} holds no spectra-*.npz/bins.npz shards; publish spectra with "
                            "`astrobio-data run spectra-sim`")
        parts = [_npz(version.read_bytes(s)) for s in shards]
        data = {k: np.concatenate([p[k] for p in parts]) for k in ("params", "mask", "depth", "depth_true", "error")}
        bins = _npz(version.read_bytes("bins.npz"))
        sim = version.read_json("simulation.json")
        n = len(data["params"])
        if n < cfg.min_rows:
            raise DataError(f"{version.ref}: only {n} spectra (model.min_rows={cfg.min_rows}); simulate more with "
                            "`astrobio-data run spectra-sim` (n_spectra in --config)")
        split = np.array([split_of(i, self.cfg.data.split_seed, self.cfg.data.val_fraction,
                                   self.cfg.data.test_fraction) for i in range(n)])
        train = split == "train"
        mask = data["mask"].astype(bool)
        if self.frozen:  # a loaded bundle keeps its scalers, bins and priors (evaluate on another version)
            if len(bins["wavelength_um"]) != len(self.bin_wavelength) or list(sim["parameters"]) != self.parameters:
                raise DataError(f"{version.ref}: its bins/parameters differ from the bundle's; evaluate on a "
                                "spectra-sim version made with the same modes")
        else:
            # one scale for every bin (so a spectrum's shape survives scaling); the encoder separates the mean
            # level from the features and multiplies the features by relative_gain (their spread -> ~1)
            observed = data["depth"][train][mask[train]]
            self.depth_mean = np.array([observed.mean()])
            self.depth_std = np.array([observed.std() + 1e-12])
            level = (np.where(mask, data["depth"], 0.0).sum(axis=1) / mask.sum(axis=1).clip(min=1))[:, None]
            relative = (data["depth"] - level)[train][mask[train]]
            self.relative_gain = np.array([self.depth_std[0] / (relative.std() + 1e-12)])
            self.parameters = list(sim["parameters"])
            self.units = dict(sim["units"])
            self.lo = np.array([sim["priors"][p][0] for p in self.parameters])
            self.hi = np.array([sim["priors"][p][1] for p in self.parameters])
            self.bin_wavelength = bins["wavelength_um"].astype(float)
            self.bin_half_width = bins["half_width_um"].astype(float)
            self.bin_mode = bins["mode"].astype(int)
            self.modes = list(sim["modes"])
            # a spectra-sim set names its forward-model settings; an imported grid (spectra-grid) has none
            self.simulator = ({"n_layers": int(sim["n_layers"]), "planet": dict(sim["planet"])}
                              if "n_layers" in sim and "planet" in sim else None)
        x = self.features(data["depth"], data["error"], mask)
        x_train = self.features(data["depth_true"], data["error"], mask) if cfg.resample_noise else x
        y = self.to_latent(data["params"])
        self._held_out = {"x": x[split == "test"], "params": data["params"][split == "test"]}

        def subset(which: str) -> TensorDataset:
            sel = split == which
            # the last tensor says whether training_step draws the noise (1) or the spectrum already holds it (0)
            draw = torch.full((int(sel.sum()),), float(which == "train" and cfg.resample_noise))
            return TensorDataset(torch.from_numpy((x_train if which == "train" else x)[sel]),
                                 torch.from_numpy(y[sel]), draw)

        counts = Counter(split.tolist())
        card = (f"Spectra in `{version.ref}`: {n} ({len(self.bin_wavelength)} bins, modes {', '.join(self.modes)}). "
                f"Split by spectrum index (seed {self.cfg.data.split_seed}): train {counts['train']}, val "
                f"{counts['val']}, test {counts['test']}. Parameters: "
                + ", ".join(f"{p} [{self.units[p]}] U({lo:g}, {hi:g})" for p, lo, hi in
                            zip(self.parameters, self.lo, self.hi, strict=True)) + ".")
        return ComponentData(train=subset("train"), val=subset("val"), test=subset("test"),
                             lineage={self.cfg.data.dataset: version.ref}, card=card)

    # -- bundle state ----------------------------------------------------------------------------
    def state(self) -> ComponentState:
        meta = {"parameters": self.parameters, "units": self.units, "modes": self.modes, "input": INPUT_FORMAT,
                "priors": {p: [float(lo), float(hi)] for p, lo, hi in zip(self.parameters, self.lo, self.hi,
                                                                            strict=True)},
                "simulator": self.simulator}
        arrays = {"depth_mean": self.depth_mean, "depth_std": self.depth_std, "relative_gain": self.relative_gain,
                  "bin_wavelength": self.bin_wavelength, "bin_half_width": self.bin_half_width,
                  "bin_mode": self.bin_mode}
        return ComponentState(meta=meta, arrays=arrays)

    def load_state(self, state: ComponentState) -> None:
        meta, arrays = state.meta, state.arrays
        if meta.get("input") != INPUT_FORMAT:
            raise DataError("this spectrum bundle predates the current input scaling (made before 2026-12-03); "
                            "retrain it: astrobio-train run -c configs/spectrum.yaml")
        self.parameters, self.units, self.modes = list(meta["parameters"]), dict(meta["units"]), list(meta["modes"])
        self.simulator = meta.get("simulator")
        self.lo = np.array([meta["priors"][p][0] for p in self.parameters])
        self.hi = np.array([meta["priors"][p][1] for p in self.parameters])
        for k in ("depth_mean", "depth_std", "relative_gain", "bin_wavelength", "bin_half_width", "bin_mode"):
            setattr(self, k, np.asarray(arrays[k]))
        self.frozen = True

    def input_schema(self) -> list[InputField]:
        return []  # the input is a spectrum file, not a table of independent rows

    # -- model and loss ------------------------------------------------------------------------
    def build_model(self, data: ComponentData | None) -> nn.Module:
        cfg: SpectrumModelConfig = self.model_cfg
        shape = {"n_bins": len(self.bin_wavelength), "n_params": len(self.parameters), "channels": cfg.channels,
                 "context": cfg.context, "hidden": cfg.hidden, "layers": cfg.flow_layers,
                 "relative_gain": float(self.relative_gain[0]), "flow": cfg.flow, "spline_bins": cfg.spline_bins}
        return RetrievalModel(**shape) if cfg.members == 1 else RetrievalEnsemble(cfg.members, **shape)

    def noisy_input(self, x: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
        """Training input: where draw = 1, the error bars (channel 1) inflated by a factor from [1,
        noise_scale_max] per spectrum and a Gaussian draw from them added to the depths (channel 0); rows with
        draw = 0 (stored noisy spectra) pass unchanged."""
        cfg: SpectrumModelConfig = self.model_cfg
        x, draw = x.float(), draw.float()[:, None]
        inflate = 1 + (cfg.noise_scale_max - 1) * torch.rand_like(x[:, 0, :1]) * draw
        error = x[:, 1] * inflate
        # channel 1 is error / depth_std and 0 where masked: a draw in the units of channel 0
        noise = torch.randn_like(x[:, 0]) * error * draw
        return torch.cat([(x[:, 0] + noise)[:, None], error[:, None], x[:, 2:]], dim=1)

    def training_step(self, model: nn.Module, batch: Any) -> StepOutput:
        x, y, draw = batch
        x = self.noisy_input(x, draw)
        return StepOutput(loss=-model(x, y.float()).float().mean(), samples=x.shape[0])

    def evaluation_step(self, model: nn.Module, batch: Any) -> StepOutput:
        """Validation loss: the negative log-density of the posterior that predict samples. For members > 1 that
        is the mixture, not the members' mean that training minimises, so the best checkpoint is the best
        mixture; for one network the two are the same."""
        x, y, draw = batch
        x = self.noisy_input(x, draw)
        module = getattr(model, "module", model)
        return StepOutput(loss=-module.log_prob(x, y.float()).float().mean(), samples=x.shape[0])

    def flops_per_sample(self, model: nn.Module) -> float:
        return 6.0 * sum(p.numel() for p in model.parameters())

    # -- posterior -----------------------------------------------------------------------------
    @torch.no_grad()
    def posterior(self, model: nn.Module, x: np.ndarray, n: int, device: torch.device, seed: int = 0) -> np.ndarray:
        """(B, 3, bins) features -> (B, n, params) samples in physical units."""
        module = getattr(model, "module", model)
        module.eval()
        gen = torch.Generator(device=device).manual_seed(seed)
        z = module.sample(torch.from_numpy(x).to(device), n, gen).float().cpu().numpy()
        return self.from_latent(z)

    def likelihood_of(self, x: np.ndarray) -> SpectrumLikelihood:
        """The forward-model likelihood of the spectrum behind features x (1, 3, bins), on its observed bins."""
        if self.simulator is None:
            raise DataError("importance sampling needs the forward model the training set was simulated with; "
                            "this bundle was trained on an imported grid (or before 2026-12-04): retrain on "
                            "spectra-sim (astrobio-train run -c configs/spectrum.yaml)")
        observed = x[0, 2] > 0
        depth = x[0, 0][observed] * self.depth_std[0] + self.depth_mean[0]
        error = x[0, 1][observed] * self.depth_std[0]
        return SpectrumLikelihood(self.bin_wavelength[observed], self.bin_half_width[observed], depth, error,
                                  planet=planet_from_record(self.simulator["planet"]),
                                  n_layers=self.simulator["n_layers"])

    def importance_posterior(self, model: nn.Module, x: np.ndarray, proposals: int, n_out: int,
                             device: torch.device, seed: int = 0, widen: float = 1.0) -> ImportanceResult:
        """Network draws for one spectrum reweighted by the forward model (`spectrum_importance`)."""
        return importance_posterior(model, x, self.from_latent, self.likelihood_of(x), proposals, n_out, device,
                                    seed, widen)

    @torch.no_grad()
    def report(self, model: nn.Module, data: ComponentData, device: torch.device) -> list[ReportSection]:
        cfg: SpectrumModelConfig = self.model_cfg
        x, truth = self._held_out["x"][: cfg.report_spectra], self._held_out["params"][: cfg.report_spectra]
        t0 = time.perf_counter()
        samples = np.concatenate([self.posterior(model, x[i:i + 50], cfg.posterior_samples, device, seed=i)
                                  for i in range(0, len(x), 50)])
        seconds = time.perf_counter() - t0
        mean = samples.mean(axis=1)
        lines = ["| parameter | unit | R^2 (posterior mean) | R^2 prior mean | 68% coverage | 95% coverage |",
                 "|---|---|---|---|---|---|"]
        metrics: dict[str, float] = {}
        for j, p in enumerate(self.parameters):
            ss = ((truth[:, j] - truth[:, j].mean()) ** 2).sum()
            r2 = 1 - ((truth[:, j] - mean[:, j]) ** 2).sum() / ss
            r2_prior = 1 - ((truth[:, j] - 0.5 * (self.lo[j] + self.hi[j])) ** 2).sum() / ss
            cov = {}
            for level in (68, 95):
                lo_q, hi_q = np.percentile(samples[:, :, j], [50 - level / 2, 50 + level / 2], axis=1)
                cov[level] = float(((truth[:, j] >= lo_q) & (truth[:, j] <= hi_q)).mean())
            lines.append(f"| {p} | {self.units[p]} | {r2:.3f} | {r2_prior:.3f} | {cov[68]:.3f} | {cov[95]:.3f} |")
            metrics |= {f"r2_{p}": float(r2), f"coverage68_{p}": cov[68], f"coverage95_{p}": cov[95]}
        module = getattr(model, "module", model)
        z = self.to_latent(truth)
        log_density = np.concatenate([module.log_prob(torch.from_numpy(x[i:i + 50]).to(device),
                                                      torch.from_numpy(z[i:i + 50]).to(device)).float().cpu().numpy()
                                      for i in range(0, len(x), 50)])
        metrics["nll_posterior"] = float(-log_density.mean())
        metrics["nll_prior"] = float(-latent_prior_log_density(z).mean())
        n = len(x)
        rate = n * cfg.posterior_samples / seconds
        lines.append(f"\nHeld-out simulated spectra: {n}; {cfg.posterior_samples} posterior samples each. "
                     f"Sampling took {seconds:.2f} s ({rate:,.0f} samples/s, {seconds / n * 1e3:.1f} ms per "
                     "spectrum on this device). R^2 of a constant prior-mean guess is the baseline row.")
        lines.append(f"\nNegative log-density of the true parameters under the posterior that is sampled: "
                     f"{metrics['nll_posterior']:.3f} nats per spectrum; under the prior (the baseline): "
                     f"{metrics['nll_prior']:.3f} (both in the probit space of the flow, mean over the same "
                     "spectra; lower is better).")
        metrics["posterior_samples_per_s"] = rate
        return [ReportSection("Held-out retrieval (simulated spectra)", "\n".join(lines), metrics)]

    # -- predict -------------------------------------------------------------------------------
    def read_spectrum(self, path: str, mask_um: list[tuple[float, float]], error_scale: float = 1.0
                      ) -> tuple[np.ndarray, str]:
        """A spectrum CSV (wavelength_um, depth or depth_ppm, error or error_ppm) -> features (1, 3, bins), the
        error bars multiplied by `error_scale`. Each point goes to the training bin whose centre is within its
        half width; others are ignored."""
        try:
            table = pacsv.read_csv(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read spectrum {path}: {str(exc).splitlines()[0]}") from None
        cols = set(table.column_names)
        scale = 1e-6 if "depth_ppm" in cols else 1.0
        need = ["wavelength_um", "depth_ppm" if scale != 1.0 else "depth", "error_ppm" if scale != 1.0 else "error"]
        missing = [c for c in need if c not in cols]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r}; a spectrum CSV needs wavelength_um, depth "
                            "(or depth_ppm) and error (or error_ppm)")
        wl, d, e = (table[c].to_numpy().astype(float) for c in need)
        d, e = d * scale, e * scale * error_scale
        bad = ~(np.isfinite(wl) & np.isfinite(d) & np.isfinite(e) & (e > 0))
        if bad.any():
            raise DataError(f"{path}: row {int(np.nonzero(bad)[0][0]) + 1} has a missing, non-finite or "
                            "non-positive value")
        depth = np.zeros(len(self.bin_wavelength))
        error = np.ones(len(self.bin_wavelength))
        mask = np.zeros(len(self.bin_wavelength), bool)
        dist = np.abs(wl[:, None] - self.bin_wavelength[None, :])
        nearest = dist.argmin(axis=1)
        ok = dist[np.arange(len(wl)), nearest] <= self.bin_half_width[nearest]
        for lo, hi in mask_um:
            ok &= ~((wl >= lo) & (wl <= hi))
        if not ok.any():
            raise DataError(f"{path}: no point falls on a training bin (bins span {self.bin_wavelength.min():.2f}-"
                            f"{self.bin_wavelength.max():.2f} um for modes {', '.join(self.modes)})")
        depth[nearest[ok]], error[nearest[ok]], mask[nearest[ok]] = d[ok], e[ok], True
        summary = f"{int(ok.sum())} of {len(wl)} points on training bins"
        return self.features(depth[None], error[None], mask[None]), summary

    def predict_file(self, model: nn.Module, input_path: str, output_path: str, device: torch.device,
                     options: dict[str, Any]) -> str:
        """Spectrum CSV in -> posterior summary CSV at output_path, samples at <output stem>.samples.npz.
        Options: `samples` (int), `mask_um` ("3.9-4.2,..." wavelength ranges to ignore; default
        model.predict_mask_um), `seed`, `error_scale` (multiplies the file's error bars; a model trained with
        noise_scale_max >= that factor has seen such spectra), `importance` (N: draw N proposals from the network
        and reweight them by the forward model, `spectrum_importance`; slower, about 6-9 ms per proposal on
        one CPU core, and it reports the effective sample size)."""
        cfg: SpectrumModelConfig = self.model_cfg
        ranges = []
        for part in str(options.get("mask_um", cfg.predict_mask_um) or "").split(","):
            if part.strip():
                lo, _, hi = part.partition("-")
                try:
                    ranges.append((float(lo), float(hi)))
                except ValueError:
                    raise DataError(f"predict option mask_um: {part.strip()!r} is not LOW-HIGH in um (e.g. "
                                    "3.9-4.2)") from None
        error_scale = _number(options, "error_scale", float, 1.0)
        n = _number(options, "samples", int, cfg.posterior_samples)
        seed = _number(options, "seed", int, 0)
        proposals = _number(options, "importance", int, 0)
        x, note = self.read_spectrum(input_path, ranges, error_scale)
        extra: dict[str, Any] = {}
        if proposals:
            result = self.importance_posterior(model, x, proposals, n, device, seed=seed)
            samples, note = result.samples, f"{note}; {result.summary()}"
            extra = {"importance": {"proposals": proposals, "effective_samples": result.effective_samples,
                                    "log_evidence": result.log_evidence, "seconds": result.seconds}}
        else:
            samples = self.posterior(model, x, n, device, seed=seed)[0]
        q = np.percentile(samples, [2.5, 16, 50, 84, 97.5], axis=0)
        summary = pa.table({
            "parameter": self.parameters, "unit": [self.units[p] for p in self.parameters],
            "mean": samples.mean(axis=0), "std": samples.std(axis=0), "q02.5": q[0], "q16": q[1], "median": q[2],
            "q84": q[3], "q97.5": q[4],
            "prior_low": self.lo, "prior_high": self.hi})
        out = Path(output_path)
        samples_path = out.with_suffix(".samples.npz")
        buf = io.BytesIO()
        np.savez(buf, samples=samples, parameters=np.array(self.parameters))
        write_local_atomic(samples_path, buf.getvalue())
        write_local_atomic(out.with_suffix(".json"), (json.dumps({
            "input": input_path, "points": note, "mask_um": ranges, "samples": n,
            "error_scale": error_scale, **extra}) + "\n").encode())
        table = io.BytesIO()
        pacsv.write_csv(summary, table)
        write_local_atomic(out, table.getvalue())
        return f"posterior of {len(self.parameters)} parameters from {note}: {out} (+ {samples_path.name})"
