"""Evaluation of the `planets` mass model: random, period-extrapolation and time-forward splits vs baselines.

Every split is scored against the Chen & Kipping (2017, ApJ 834, 17) relation (its posterior median and
16-84% spread at the planet's radius) and a constant baseline (training mean and standard deviation), in RMSE
of log10 mass [dex], mean Gaussian negative log-likelihood and 68%/95% interval coverage. The re-trained
splits use the run's own hyper-parameters, early-stopped on a validation share of their training rows, whose
PIT values also recalibrate the model's intervals; the test rows of a split are never used to choose anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.components.base import ReportSection
from trainer.models.mass_model import (
    EARTH_DENSITY,
    CentralIntervalCalibration,
    gaussian_nll,
    mixture_cdf,
    mixture_quantiles,
)
from trainer.science.mass_radius import log_mass_posterior

if TYPE_CHECKING:
    from trainer.components.planets import PlanetsComponent, Rows

REGIMES = (("R < 2", 0.0, 2.0), ("2 <= R < 6", 2.0, 6.0), ("R >= 6", 6.0, math.inf))  # Earth radii
GOAL_DENSITY = (0.05, 30.0)  # g/cm^3


@dataclass
class Scored:
    """Per test row: truth, radius, measurement error, each predictor's Gaussian members (N, K) in log10 M
    (K = 1 for the baselines; the predictive distribution is their equal-weight mixture) and the central level
    at which the truth sits in each predictor's intervals (recalibrated for the model; `UNCALIBRATED` holds the
    model's plain mixture levels)."""

    truth: np.ndarray
    radius: np.ndarray
    err: np.ndarray
    preds: dict[str, tuple[np.ndarray, np.ndarray]]
    levels: dict[str, np.ndarray]

    def take(self, mask: np.ndarray) -> Scored:
        return Scored(self.truth[mask], self.radius[mask], self.err[mask],
                      {k: (m[mask], s[mask]) for k, (m, s) in self.preds.items()},
                      {k: v[mask] for k, v in self.levels.items()})

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        def cat(get) -> np.ndarray:
            return np.concatenate([get(p) for p in parts])

        preds = {k: (cat(lambda p, k=k: p.preds[k][0]), cat(lambda p, k=k: p.preds[k][1])) for k in parts[0].preds}
        levels = {k: cat(lambda p, k=k: p.levels[k]) for k in parts[0].levels}
        return Scored(cat(lambda p: p.truth), cat(lambda p: p.radius), cat(lambda p: p.err), preds, levels)

    def median(self, which: str) -> np.ndarray:
        mu, sigma = self.preds[which]
        return mixture_quantiles(torch.tensor(mu), torch.tensor(sigma), [0.5])[:, 0].numpy()

    def coverage(self, which: str, level: float) -> float:
        """Share of rows inside `which`'s central interval of nominal `level`."""
        return float(np.mean(self.levels[which] <= level))

    def metrics(self, which: str) -> dict[str, float]:
        """RMSE of the median and NLL of the (uncalibrated) mixture, both widened by the measurement error where
        known; coverage of the 68% and 95% intervals."""
        mu, sigma = self.preds[which]
        total = np.sqrt(sigma**2 + self.err[:, None] ** 2)
        density = np.exp(-0.5 * ((self.truth[:, None] - mu) / total) ** 2) / (np.sqrt(2 * np.pi) * total)
        return {"rmse": float(np.sqrt(np.mean((self.median(which) - self.truth) ** 2))),
                "nll": float(-np.log(density.mean(axis=1)).mean()),
                "cov68": self.coverage(which, 0.68), "cov95": self.coverage(which, 0.95)}


PREDICTORS = ("model", "chen_kipping", "constant")
UNCALIBRATED = "model, uncalibrated"


def central_level(truth: np.ndarray, err: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """2|PIT - 0.5|: the central level of the mixture at the observed value (measurement error widens members)."""
    total = np.sqrt(sigma**2 + err[:, None] ** 2)
    pit = mixture_cdf(torch.tensor(truth), torch.tensor(mu), torch.tensor(total)).numpy()
    return 2 * np.abs(pit - 0.5)


def fit(component: PlanetsComponent, train: Rows, val: Rows, seed: int):
    """Train a fresh ensemble on `train`, early-stopped on `val` (whose PIT recalibrates its intervals), with the
    run's hyper-parameters."""
    from trainer.components.planets import Scaling, bootstrap_weights, build_mass_model, tensors, validation_calibration

    cfg, run = component.model_cfg, component.cfg
    torch.manual_seed(seed)
    scaling = Scaling.fit(train.raw)
    model = build_mass_model(cfg, scaling, scaling.transform(train.raw))
    tr = tensors(train, scaling, bootstrap_weights(len(train.names), cfg.members, seed)).tensors
    va = tensors(val, scaling, np.ones((len(val.names), cfg.members))).tensors
    opt = torch.optim.AdamW(model.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, stale = math.inf, None, 0
    for step in range(1, run.train.max_steps + 1):
        model.train()
        idx = torch.randint(0, tr[0].shape[0], (run.data.batch_size,), generator=gen)
        x, log_r, y, err, w = (t[idx] for t in tr)
        loss = gaussian_nll(*model(x, log_r), y, err, w)
        opt.zero_grad()
        loss.backward()
        if run.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.clip_grad_norm)
        opt.step()
        if step % run.train.eval_every == 0 or step == run.train.max_steps:
            model.eval()
            with torch.no_grad():
                value = float(gaussian_nll(*model(va[0], va[1]), va[2], va[3]))
            if value < best:
                best, best_state, stale = value, {k: v.clone() for k, v in model.state_dict().items()}, 0
            else:
                stale += 1
                if run.train.early_stopping_patience and stale >= run.train.early_stopping_patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, scaling, validation_calibration(model, scaling, val, next(model.parameters()).device)


def score(model: torch.nn.Module, scaling, calibration: CentralIntervalCalibration, train: Rows, test: Rows,
          device: torch.device) -> Scored:
    """The model (its intervals recalibrated by `calibration`), Chen & Kipping and the constant baseline on the
    test rows."""
    from trainer.components.planets import predict_members

    model = model.to(device)
    members = predict_members(model, scaling.transform(test.raw), np.log10(test.radius), device)
    ck_mean, ck_sigma = log_mass_posterior(test.radius)
    n = len(test.names)
    const = (np.full((n, 1), train.log_mass.mean()), np.full((n, 1), train.log_mass.std()))
    preds = {"model": members, "chen_kipping": (ck_mean[:, None], ck_sigma[:, None]), "constant": const}
    levels = {k: central_level(test.log_mass, test.log_mass_err, *v) for k, v in preds.items()}
    levels[UNCALIBRATED] = levels["model"]
    levels["model"] = calibration.calibrated_level(levels[UNCALIBRATED])
    return Scored(test.log_mass, test.radius, test.log_mass_err, preds, levels)


def holdout_by(values: np.ndarray, fraction: float) -> tuple[np.ndarray, float]:
    """Test mask: the largest `fraction` of the finite values (ties kept together); the threshold."""
    finite = np.isfinite(values)
    threshold = float(np.quantile(values[finite], 1 - fraction))
    return finite & (values > threshold), threshold


def cutoff_year(years: np.ndarray, fraction: float) -> int:
    """The discovery year after which the share of later discoveries is closest to `fraction`."""
    finite = years[np.isfinite(years)]
    candidates = np.unique(finite)[:-1]
    shares = np.array([np.mean(finite > y) for y in candidates])
    return int(candidates[np.argmin(np.abs(shares - fraction))])


def evaluate(component: PlanetsComponent, model: torch.nn.Module, device: torch.device,
             run_dir: Path | None, protocol: bool = True) -> list[ReportSection]:
    """All splits, baselines, per-regime rows, coverage, goals and figures (calibration.png, residuals.png)."""
    from trainer.components.planets import split_of

    cfg, run = component.model_cfg, component.cfg
    rows, split = component.rows, component.split
    val_f, test_f = run.data.val_fraction, run.data.test_fraction

    def val_mask(names: list[str], seed: int) -> np.ndarray:
        return np.array([split_of(nm, seed, val_f, 0.0) == "val" for nm in names])

    def retrain(test: np.ndarray, seed: int) -> Scored:
        rest = rows.take(~test)
        v = val_mask(rest.names, seed)
        return score(*fit(component, rest.take(~v), rest.take(v), seed), rest.take(~v), rows.take(test), device)

    main = score(model, component.scaling, component.calibration, rows.take(split == "train"), component.held_out,
                 device)
    header = ("| split | test planets | RMSE model | RMSE C&K | RMSE constant | NLL model | NLL C&K | NLL constant "
              "| 68% cov. model | 95% cov. model | 68% cov. C&K | 95% cov. C&K |")
    lines = [header, "|" + "---|" * 12]

    def row(label: str, sc: Scored) -> dict[str, dict[str, float]]:
        m = {p: sc.metrics(p) for p in PREDICTORS}
        lines.append(f"| {label} | {len(sc.truth)} | " + " | ".join(f"{m[p]['rmse']:.3f}" for p in PREDICTORS)
                     + " | " + " | ".join(f"{m[p]['nll']:.3f}" for p in PREDICTORS)
                     + f" | {m['model']['cov68']:.3f} | {m['model']['cov95']:.3f} | {m['chen_kipping']['cov68']:.3f}"
                     f" | {m['chen_kipping']['cov95']:.3f} |")
        return m

    main_m = row(f"this run's model, random split seed {run.data.split_seed} (trained by the loop)", main)
    metrics = {"test_rmse_dex": main_m["model"]["rmse"], "chen_kipping_rmse_dex": main_m["chen_kipping"]["rmse"],
               "constant_rmse_dex": main_m["constant"]["rmse"], "test_nll": main_m["model"]["nll"],
               "test_coverage68": main_m["model"]["cov68"], "test_coverage95": main_m["model"]["cov95"]}
    title = "Held-out evaluation (log10 mass, Earth masses)"
    if not protocol:
        lines.append("\nRe-trained splits not run (model.protocol_evaluation=false).")
        return [ReportSection(title, "\n".join(lines), metrics)]
    seeds = list(range(run.data.split_seed, run.data.split_seed + cfg.eval_split_seeds))
    randoms = []
    for s in seeds:
        labels = np.array([split_of(nm, s, val_f, test_f) for nm in rows.names])
        fitted = fit(component, rows.take(labels == "train"), rows.take(labels == "val"), s)
        randoms.append(score(*fitted, rows.take(labels == "train"), rows.take(labels == "test"), device))
    period_test, period_cut = holdout_by(rows.period, cfg.eval_holdout_fraction)
    period = retrain(period_test, run.data.split_seed)
    year = cutoff_year(rows.year, cfg.eval_holdout_fraction)
    time_test = np.isfinite(rows.year) & (rows.year > year)
    time = retrain(time_test, run.data.split_seed)
    pooled = Scored.concat(randoms)

    per_seed = [row(f"random split seed {s} (re-trained)", sc) for s, sc in zip(seeds, randoms, strict=True)]
    pooled_m = row(f"random, {len(seeds)} seeds pooled", pooled)
    period_m = row(f"extrapolation: period > {period_cut:.1f} d held out", period)
    time_m = row(f"time-forward: discovered after {year} held out", time)

    lines += ["", "Per radius regime (Earth radii):", "", header.replace("| split |", "| split, regime |"),
              "|" + "---|" * 12]
    for label, sc in (("random pooled", pooled), ("period", period), ("time-forward", time)):
        for name, lo, hi in REGIMES:
            mask = (sc.radius >= lo) & (sc.radius < hi)
            if mask.any():
                row(f"{label}, {name}", sc.take(mask))
            else:
                lines.append(f"| {label}, {name} | 0 |" + " n/a |" * 10)

    improvements = np.array([m["chen_kipping"]["rmse"] - m["model"]["rmse"] for m in per_seed])
    imp_mean, imp_std = float(improvements.mean()), float(improvements.std(ddof=1)) if len(seeds) > 1 else 0.0
    period_gap = period_m["model"]["rmse"] - period_m["chen_kipping"]["rmse"]
    time_gap = time_m["model"]["rmse"] - time_m["chen_kipping"]["rmse"]
    densities = np.concatenate([10 ** sc.median("model") / sc.radius**3 * EARTH_DENSITY
                                for sc in (main, *randoms, period, time)])
    cov68, cov95 = pooled_m["model"]["cov68"], pooled_m["model"]["cov95"]
    raw68, raw95 = pooled.coverage(UNCALIBRATED, 0.68), pooled.coverage(UNCALIBRATED, 0.95)
    goals = [
        ("random split beats C&K: mean RMSE improvement > 2 std over seeds",
         f"{imp_mean:.3f} +- {imp_std:.3f} dex ({', '.join(f'{x:.3f}' for x in improvements)})",
         imp_mean > 2 * imp_std),
        ("extrapolation by period: RMSE at most 0.03 dex worse than C&K", f"{period_gap:+.3f} dex", period_gap <= 0.03),
        ("time-forward: RMSE at most 0.03 dex worse than C&K", f"{time_gap:+.3f} dex", time_gap <= 0.03),
        ("95% coverage in [0.92, 0.98] (random, pooled)", f"{cov95:.3f}", 0.92 <= cov95 <= 0.98),
        ("68% coverage in [0.62, 0.74] (random, pooled)", f"{cov68:.3f}", 0.62 <= cov68 <= 0.74),
        ("every test density in [0.05, 30] g/cm3", f"{densities.min():.3f} to {densities.max():.2f} g/cm3",
         GOAL_DENSITY[0] <= densities.min() and densities.max() <= GOAL_DENSITY[1]),
    ]
    lines += ["", "Goals (issue 9):", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {v} | {'yes' if ok else 'NO'} |" for g, v, ok in goals]
    lines += ["", f"Coverage of the model's intervals before the recalibration on validation rows (random, pooled): "
              f"68% {raw68:.3f}, 95% {raw95:.3f}."]

    if run_dir is None:
        lines += ["", "Figures (calibration.png, residuals.png) are written with the training report only."]
    else:
        figures = [_calibration_png(run_dir, pooled, period, time), _residuals_png(run_dir, pooled)]
        lines += ["", *(f"![{name}]({name})" for name in figures)]
    lines += ["", "Baselines: Chen & Kipping (2017, ApJ 834, 17), Table 1 mean hyper-parameters, posterior median "
              "and 16-84% half-width of log10 M at the planet's radius; constant = training mean and standard "
              "deviation of log10 M. Data: see 'Data used' (NASA Exoplanet Archive / Open Exoplanet Catalogue). "
              "The predictive distribution of log10 M is the equal-weight mixture of the ensemble members' Gaussians "
              "(so it holds their disagreement); point predictions are its median, intervals its central quantiles at "
              "levels recalibrated on the validation rows' PIT (Kuleshov et al. 2018), scored with the measurement "
              "error widening every member where the data has one; NLL is that of the mixture itself. Re-trained "
              "splits take their validation share from the training side (same name hash); the period and time "
              "thresholds depend only on periods and years, never on scores."]
    metrics |= {
        "random_rmse_mean_dex": float(np.mean([m["model"]["rmse"] for m in per_seed])),
        "random_improvement_mean_dex": imp_mean, "random_improvement_std_dex": imp_std,
        "period_rmse_minus_ck_dex": period_gap, "time_rmse_minus_ck_dex": time_gap,
        "coverage68_random": cov68, "coverage95_random": cov95,
        "coverage68_random_uncalibrated": raw68, "coverage95_random_uncalibrated": raw95,
        "density_min_gcc": float(densities.min()), "density_max_gcc": float(densities.max()),
    }
    return [ReportSection(title, "\n".join(lines), metrics)]


def _save(fig, path: Path) -> str:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path.name


def _calibration_png(run_dir: Path, pooled: Scored, period: Scored, time: Scored) -> str:
    """Observed vs nominal central-interval coverage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir.mkdir(parents=True, exist_ok=True)
    levels = np.linspace(0.05, 0.95, 19)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.plot([0, 1], [0, 1], "k:", linewidth=1, label="ideal")
    curves = (("model, random", pooled, "model"), ("model before recalibration, random", pooled, UNCALIBRATED),
              ("model, period", period, "model"), ("model, time-forward", time, "model"),
              ("Chen & Kipping, random", pooled, "chen_kipping"))
    for label, sc, which in curves:
        ax.plot(levels, [sc.coverage(which, p) for p in levels], "o-", markersize=3, label=label)
    ax.set_xlabel("nominal central interval")
    ax.set_ylabel("share of test planets inside")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = _save(fig, run_dir / "calibration.png")
    plt.close(fig)
    return name


def _residuals_png(run_dir: Path, pooled: Scored) -> str:
    """Observed minus predicted log10 mass against radius, model and Chen & Kipping."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, which, marker in (("Chen & Kipping 2017", "chen_kipping", "x"), ("model", "model", "o")):
        ax.scatter(pooled.radius, pooled.truth - pooled.median(which), s=8, marker=marker, alpha=0.5, label=label)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("radius [Earth radii]")
    ax.set_ylabel("observed - predicted log10 M [dex]")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    name = _save(fig, run_dir / "residuals.png")
    plt.close(fig)
    return name
