"""Import someone else's labelled spectra (npz, npy or CSV) into the layout spectra-sim publishes, so the
`spectrum` component trains on it: `astrobio-data run spectra-grid --from-file PATH [--config ...]`.

Accepted files:
- `.npz` with `wavelength_um` (bins,), `depth` (n, bins), `labels` (n, k), `label_names` (k,) and optionally
  `error` ((n, bins) or (bins,));
- `.csv` whose depth columns are named by their wavelength in um (e.g. `1.405`); the label columns are named in
  the config (`labels`), an optional `error` column holds one 1-sigma error per spectrum;
- `.npy`, a float matrix: row 0 holds the wavelengths (um) over the depth columns, the first k columns hold the
  labels (k = len(labels) in the config).
Depths are (Rp/Rs)^2 (set `depth_unit: ppm` otherwise). Without per-bin errors, `error` from the config is used.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.csv as pacsv
from pydantic import Field

from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import DataError
from datajobs.forward_model import bin_edges
from datajobs.job import Context, Product
from datajobs.store import Shard

DESCRIPTION = "a labelled spectra set imported from a file (npz/npy/CSV), laid out like spectra-sim"
SNAPSHOT = None


class Config(SourceConfig):
    labels: list[str] = Field(default_factory=list, description="label columns (CSV) / count of label columns (npy)")
    depth_unit: str = Field("fraction", pattern="^(fraction|ppm)$", description="unit of the depths in the file")
    error: float | None = Field(None, gt=0, description="1-sigma error for every bin when the file has none")
    priors: dict[str, tuple[float, float]] = Field(default_factory=dict,
                                                   description="label ranges; default the data's min..max")


def _read(ctx: Context, cfg: Config, data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray,
                                                           list[str]]:
    name = str(ctx.file)
    if name.endswith(".npz"):
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                need = [k for k in ("wavelength_um", "depth", "labels", "label_names") if k not in z.files]
                if need:
                    raise DataError(f"{name} lacks array {need[0]!r} (needs wavelength_um, depth, labels, label_names)")
                err = z["error"] if "error" in z.files else None
                return (z["wavelength_um"].astype(float), z["depth"].astype(float),
                        None if err is None else err.astype(float), z["labels"].astype(float),
                        [str(s) for s in z["label_names"]])
        except ValueError as exc:
            raise DataError(f"{name} is not a plain npz ({exc})") from None
    if not cfg.labels:
        raise DataError(f"{name}: set spectra-grid.labels in --config (the label columns)")
    if name.endswith(".npy"):
        try:
            m = np.load(io.BytesIO(data), allow_pickle=False).astype(float)
        except ValueError as exc:
            raise DataError(f"{name} is not a plain npy float matrix ({exc})") from None
        k = len(cfg.labels)
        if m.ndim != 2 or m.shape[1] <= k or m.shape[0] < 2:
            raise DataError(f"{name}: expected a (1 + n, {k} + bins) matrix, got {m.shape}")
        return m[0, k:], m[1:, k:], None, m[1:, :k], list(cfg.labels)
    try:
        table = pacsv.read_csv(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for malformed CSV
        raise DataError(f"{name} is not a CSV table ({str(exc).splitlines()[0]})") from None
    wcols = [c for c in table.column_names if c.replace(".", "", 1).isdigit()]
    missing = [c for c in cfg.labels if c not in table.column_names]
    if not wcols or missing:
        raise DataError(f"{name}: " + (f"no label column {missing[0]!r}" if missing else
                                       "no depth columns named by wavelength (um)"))
    depth = np.stack([table[c].to_numpy().astype(float) for c in wcols], axis=1)
    labels = np.stack([table[c].to_numpy().astype(float) for c in cfg.labels], axis=1)
    err = None
    if "error" in table.column_names:
        err = np.broadcast_to(table["error"].to_numpy().astype(float)[:, None], depth.shape)
    return np.array([float(c) for c in wcols]), depth, err, labels, list(cfg.labels)


def build(ctx: Context) -> Product:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode != "file":
        raise DataError("spectra-grid imports a file: astrobio-data run spectra-grid --from-file PATH")
    data, source = ctx.read_offline(ctx.file, "a labelled spectra file (npz/npy/CSV)")  # type: ignore[arg-type]
    wl, depth, err, labels, names = _read(ctx, cfg, data)
    scale = 1e-6 if cfg.depth_unit == "ppm" else 1.0
    order = np.argsort(wl)
    wl, depth = wl[order], depth[:, order] * scale
    if err is None:
        if cfg.error is None:
            raise DataError(f"{ctx.file} has no errors; set spectra-grid.error (1-sigma, {cfg.depth_unit}) in --config")
        err = np.full_like(depth, cfg.error * scale)
    else:
        err = np.broadcast_to(err, depth.shape)[:, order] * scale
    good = np.isfinite(depth).all(axis=1) & np.isfinite(labels).all(axis=1) & (err > 0).all(axis=1)
    bad = int((~good).sum())
    if bad > cfg.max_invalid_share * len(good):
        raise DataError(f"{ctx.file}: {bad} of {len(good)} spectra have non-finite values (above max_invalid_share)")
    lo_e, hi_e = bin_edges(wl)
    priors = {n: tuple(cfg.priors.get(n, (float(labels[good, j].min()), float(labels[good, j].max()))))
              for j, n in enumerate(names)}
    priors = {n: (lo, hi if hi > lo else lo + 1.0) for n, (lo, hi) in priors.items()}
    n = int(good.sum())
    buf, bbuf = io.BytesIO(), io.BytesIO()
    np.savez(buf, params=labels[good], mode=np.zeros(n, np.int8), mask=np.ones((n, len(wl)), bool),
             depth=depth[good], depth_true=depth[good], error=err[good])
    np.savez(bbuf, mode=np.zeros(len(wl), np.int8), wavelength_um=wl, half_width_um=(hi_e - lo_e) / 2,
             error=np.median(err[good], axis=0))
    meta = {"parameters": names, "units": {nm: "" for nm in names}, "priors": {k: list(v) for k, v in priors.items()},
            "modes": ["file"], "noise": {"kind": "as given in the file" if cfg.error is None else "constant",
                                         "sigma": cfg.error}}
    shards = [
        Shard("spectra-000.npz", buf.getvalue(), rows=n),
        Shard("bins.npz", bbuf.getvalue(), rows=len(wl)),
        Shard.json("simulation.json", meta),
        card("spectra-grid: imported labelled spectra", source=[f"file {source['file']} (sha256 {source['sha256']})"],
             rows={"spectra": n, "bins": len(wl)}, quarantined={"non-finite spectrum or label": bad},
             notes=[f"labels: {', '.join(names)}; ranges (used as priors): "
                    + ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in priors.items())]),
    ]
    return Product(shards, source, rows_fetched=len(good), rows_quarantined=bad, extra={"quarantine": {"rows": bad}})
