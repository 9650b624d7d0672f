"""Held-out evaluation of the datacube emulator against nearest neighbour, ridge, PCA + GP and climlab's EBM."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainer.components.base import ReportSection
from trainer.models.cnn_vit import latitude_weights

if TYPE_CHECKING:
    from trainer.components.datacube import DatacubeComponent


def lat_rmse(pred: np.ndarray, truth: np.ndarray, w: np.ndarray) -> float:
    return float(np.sqrt(((pred - truth) ** 2).mean(-1) @ w))


def acc(pred: np.ndarray, truth: np.ndarray, clim: np.ndarray, w: np.ndarray) -> float:
    """Latitude-weighted anomaly correlation (anomalies w.r.t. the training-run mean)."""
    a, b = pred - clim, truth - clim
    num = (a * b).mean(-1) @ w
    den = math.sqrt(float((a * a).mean(-1) @ w) * float((b * b).mean(-1) @ w))
    return float(num / den) if den > 0 else float("nan")


def gmean(field: np.ndarray, w: np.ndarray) -> float:
    return float(field.mean(-1) @ w)


def habitable_fraction(ts: np.ndarray, w: np.ndarray) -> float:
    return gmean(((ts >= 273.0) & (ts <= 373.0)).astype(np.float64), w)


def day_night(ts: np.ndarray, lon: np.ndarray, w: np.ndarray) -> float:
    day = np.cos(np.deg2rad(lon - 180.0)) > 0
    return float((ts[:, day].mean(-1) - ts[:, ~day].mean(-1)) @ w)


def baselines(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, gp_components: int) -> dict[str, Any]:
    """Nearest neighbour, ridge regression and PCA + GP predictions [N_test, C, lat, lon] (scaled inputs)."""
    from sklearn.decomposition import PCA
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from sklearn.linear_model import Ridge

    n, shape = train_y.shape[0], train_y.shape[1:]
    flat = train_y.reshape(n, -1)
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    z = (flat - mean) / std
    d = ((test_x[:, None, :] - train_x[None, :, :]) ** 2).sum(-1)
    out = {"nearest neighbour (parameters)": train_y[d.argmin(1)]}
    ridge = Ridge(alpha=1.0).fit(train_x, z)
    out["ridge regression (parameters)"] = (ridge.predict(test_x) * std + mean).reshape(-1, *shape)
    k = max(1, min(gp_components, n - 1))
    pca = PCA(n_components=k).fit(z)
    pcs = pca.transform(z)
    kernel = ConstantKernel(1.0) * RBF(length_scale=np.ones(train_x.shape[1]) * 2.0) + WhiteKernel(1e-2)
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)
    gp.fit(train_x, pcs)
    out[f"PCA ({k}) + GP regression"] = (pca.inverse_transform(gp.predict(test_x).reshape(-1, k)) * std
                                          + mean).reshape(-1, *shape)
    return out


def ebm_zonal_ts(flux: float, lat: np.ndarray) -> np.ndarray:
    """climlab EBM_seasonal (Earth diffusivity and OLR law, zero obliquity) zonal-mean Ts [K] at `lat`."""
    import climlab

    model = climlab.EBM_seasonal(num_lat=90, water_depth=10.0, S0=flux,
                                 orb={"ecc": 0.0, "long_peri": 0.0, "obliquity": 0.0})
    model.integrate_years(5, verbose=False)
    ts = np.array(model.Ts).ravel() + 273.15
    return np.interp(lat, np.array(model.lat).ravel(), ts)


def report(comp: DatacubeComponent, model: nn.Module, device: torch.device) -> list[ReportSection]:
    ev = comp._eval
    rows, split, target = ev["rows"], ev["split"], ev["target"]
    test = np.flatnonzero(split == "test")
    train = np.flatnonzero(split == "train")
    w = latitude_weights(torch.tensor(comp.lat, dtype=torch.float64)).numpy()
    test_rows = [rows[i] for i in test]
    preds = {"CNN-ViT (this model)": comp.predict_cubes(model, test_rows, device)}
    train_x = ev["x_params"][train].astype(np.float64)
    preds.update(baselines(train_x, target[train], ev["x_params"][test].astype(np.float64),
                           comp.model_cfg.gp_components))
    clim = target[train].mean(0)
    truth = target[test]
    i_ts = comp.channel_index("ts")
    lines = [f"Held-out runs: {len(test)} (train {len(train)}); split by run. Metrics: latitude-weighted RMSE "
             "(mean over held-out runs, ± standard error) and ACC (anomalies w.r.t. the training-run mean; "
             "Rasp et al. 2020, ClimaX). Baselines fitted on the training runs only.", ""]
    var_channels = [(v, comp.channel_index(v) if v in comp.vars2d else comp.channel_index(v, len(comp.lev) - 1))
                    for v in report_variables(comp)]
    header = "| predictor | " + " | ".join(f"{v} RMSE [{comp.units[v]}]" for v, _ in var_channels) + " |"
    lines += [header, "|---|" + "---|" * len(var_channels)]
    metrics: dict[str, float] = {}
    acc_lines = ["| predictor | " + " | ".join(f"{v} ACC" for v, _ in var_channels) + " |",
                 "|---|" + "---|" * len(var_channels)]
    for label, p in preds.items():
        cells, acells = [], []
        for v, c in var_channels:
            r = np.array([lat_rmse(p[j, c], truth[j, c], w) for j in range(len(test))])
            a = np.array([acc(p[j, c], truth[j, c], clim[c], w) for j in range(len(test))])
            se = r.std(ddof=1) / math.sqrt(len(r)) if len(r) > 1 else float("nan")
            cells.append(f"{r.mean():.3g} ± {se:.2g}")
            acells.append(f"{np.nanmean(a):.2f}")
            metrics[f"{slug(label)}_{v}_rmse"] = float(r.mean())
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        acc_lines.append(f"| {label} | " + " | ".join(acells) + " |")
    lines += ["", "3-D variables at the lowest model level (sigma "
              f"{comp.lev[-1]:.3f}).", "", *acc_lines]

    # climlab EBM: zonal-mean surface temperature only
    zonal_truth = truth[:, i_ts].mean(-1)
    zl = ["", "### Zonal-mean surface temperature", "", "| predictor | zonal-mean Ts RMSE [K] |", "|---|---|"]
    def zonal_rmse(zonal: np.ndarray) -> float:
        return float(np.mean([np.sqrt((zonal[j] - zonal_truth[j]) ** 2 @ w) for j in range(len(test))]))

    for label, p in preds.items():
        zl.append(f"| {label} | {zonal_rmse(p[:, i_ts].mean(-1)):.2f} |")
    if comp.model_cfg.ebm_baseline:
        ebm_rmse = zonal_rmse(np.array([ebm_zonal_ts(r["flux"], comp.lat) for r in test_rows]))
        zl.append(f"| climlab EBM_seasonal (Earth D, A, B; S0 = flux; zero obliquity) | {ebm_rmse:.2f} |")
        metrics["ebm_zonal_ts_rmse"] = ebm_rmse
    lines += zl

    # derived habitability quantities
    dl = ["", "### Derived quantities (held-out runs)", "",
          "| predictor | global-mean Ts abs. error, median [K] | habitable fraction abs. error, mean | "
          "day-night Ts contrast abs. error, synchronous runs [K] | energy imbalance: predicted minus simulator, "
          "mean abs. [W m-2] |", "|---|---|---|---|---|"]
    sim_imb = ev["imbalance"][test]
    sync = [j for j, r in enumerate(test_rows) if r["synchronous"]]
    i_sw, i_lw = comp.channel_index("rst"), comp.channel_index("rlut")
    for label, p in preds.items():
        g = np.abs([gmean(p[j, i_ts], w) - gmean(truth[j, i_ts], w) for j in range(len(test))])
        h = np.abs([habitable_fraction(p[j, i_ts], w) - habitable_fraction(truth[j, i_ts], w)
                    for j in range(len(test))])
        dn = np.abs([day_night(p[j, i_ts], comp.lon, w) - day_night(truth[j, i_ts], comp.lon, w) for j in sync])
        imb = np.abs([gmean(p[j, i_sw] + p[j, i_lw], w) - sim_imb[j] for j in range(len(test))])
        dl.append(f"| {label} | {np.median(g):.2f} | {h.mean():.3f} | "
                  f"{(f'{dn.mean():.2f}' if len(dn) else 'no synchronous held-out run')} | {imb.mean():.2f} |")
        metrics[f"{slug(label)}_gmst_median_abs_err_k"] = float(np.median(g))
    dl.append("")
    dl.append(f"Simulator's own global-mean net top radiation on the held-out runs: "
              f"{', '.join(f'{x:.1f}' for x in sim_imb)} W m-2 (runs are short: not in equilibrium).")
    lines += dl
    lines += learning_curve(comp, ev, w, preds, train, test, truth, i_ts, device)
    figure = maps(comp, test_rows, truth, preds["CNN-ViT (this model)"], i_ts)
    if figure:
        lines += ["", f"![surface temperature: truth, prediction, error]({figure})"]
    return [ReportSection("Held-out climate emulation", "\n".join(lines), metrics)]


def report_variables(comp: DatacubeComponent) -> list[str]:
    from trainer.components.datacube import REPORT_VARIABLES

    return [v for v in REPORT_VARIABLES if v in comp.vars2d or v in comp.vars3d]


def slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label.lower()).strip("_")[:32]


def learning_curve(comp, ev, w, preds, train, test, truth, i_ts, device) -> list[str]:
    """Ts RMSE on the held-out runs vs number of training runs, for the CNN-ViT (short retrains) and PCA + GP."""
    steps = comp.model_cfg.learning_curve_steps
    sizes = sorted({n for n in (2, 4, 8, 16, 32, len(train)) if 2 <= n <= len(train)})
    if not sizes:
        return []
    lines = ["", "### Learning curve (surface temperature, held-out runs)", "",
             f"Each point: the first n training runs (split order); the CNN-ViT retrained for {steps} steps "
             "(the full model above trained for train.max_steps).", "",
             "| training runs | CNN-ViT Ts RMSE [K] | PCA + GP Ts RMSE [K] | nearest neighbour Ts RMSE [K] |",
             "|---|---|---|---|"]
    for n in sizes:
        idx = train[:n]
        base = baselines(ev["x_params"][idx].astype(np.float64), ev["target"][idx][:, i_ts:i_ts + 1],
                         ev["x_params"][test].astype(np.float64), comp.model_cfg.gp_components)
        gp = next(v for k, v in base.items() if k.startswith("PCA"))
        nn_ = base["nearest neighbour (parameters)"]
        cnn = retrain_ts(comp, idx, test, steps, device) if steps else None
        def r(p: np.ndarray) -> float:
            return float(np.mean([lat_rmse(p[j], truth[j, i_ts], w) for j in range(len(test))]))

        lines.append(f"| {n} | {'' if cnn is None else f'{r(cnn):.2f}'} | {r(gp[:, 0]):.2f} | {r(nn_[:, 0]):.2f} |")
    return lines


def retrain_ts(comp, idx, test, steps: int, device) -> np.ndarray:
    """Train a fresh model on runs `idx` for `steps` full-batch steps; its Ts prediction on the test runs."""
    ev = comp._eval
    torch.manual_seed(0)
    model = comp.build_model(None).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=comp.cfg.optim.lr)
    y = (ev["target"] - comp.c_mean[None, :, None, None]) / comp.c_std[None, :, None, None]
    batch = (torch.tensor(ev["x_fields"][idx], device=device), torch.tensor(ev["x_params"][idx], device=device),
             torch.tensor(y[idx], dtype=torch.float32, device=device),
             torch.tensor(ev["imbalance"][idx], device=device))
    model.train()
    for _ in range(steps):
        loss = comp.training_step(model, batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = [ev["rows"][i] for i in test]
    return comp.predict_cubes(model, rows, device)[:, comp.channel_index("ts")]


def maps(comp, test_rows, truth, pred, i_ts) -> str | None:
    """maps.png in the run folder: truth, prediction and error of Ts for up to three held-out runs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    k = min(3, len(test_rows))
    fig, axes = plt.subplots(k, 3, figsize=(12, 2.6 * k), squeeze=False)
    extent = (float(comp.lon[0]), float(comp.lon[-1]), float(comp.lat[-1]), float(comp.lat[0]))
    for j in range(k):
        t, p = truth[j, i_ts], pred[j, i_ts]
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        for ax, field, title, kw in ((axes[j, 0], t, "ExoPlaSim Ts [K]", {"vmin": lo, "vmax": hi}),
                                     (axes[j, 1], p, "CNN-ViT Ts [K]", {"vmin": lo, "vmax": hi}),
                                     (axes[j, 2], p - t, "error [K]", {"cmap": "RdBu_r"})):
            im = ax.imshow(field, extent=extent, aspect="auto", **kw)
            r = test_rows[j]
            ax.set_title(f"{title}: {r['run_id']} S={r['flux']:.0f}, {'sync' if r['synchronous'] else 'free'}",
                         fontsize=8)
            fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = Path(comp.cfg.logging.run_dir) / comp.cfg.run_name / "maps.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return "maps.png"
