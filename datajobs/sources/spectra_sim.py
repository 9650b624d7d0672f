"""Simulated JWST transmission spectra: parameters from documented priors -> datajobs.forward_model -> instrument
bins and error bars of the real WASP-39b ERS spectrum -> noisy depths, in resumable, deterministic chunks."""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import DataError
from datajobs.forward_model import R_JUP, WASP39B, ForwardModel, Planet, bin_matrix, isothermal
from datajobs.job import Context, Product
from datajobs.logs import track
from datajobs.spectra_reference import load_wasp39b
from datajobs.store import Shard, resolve_root, write_local_atomic

DESCRIPTION = "simulated JWST transmission spectra (forward model + real WASP-39b bins and error bars)"
SNAPSHOT = None
# instrument mode -> rows of the bundled WASP-39b file (pyratbay `instrument` column)
MODES = {"prism": ("nirspec_prism",), "g395h": ("nirspec_g395h_nrs1", "nirspec_g395h_nrs2")}
PARAMETERS = ("temperature", "log_h2o", "log_co2", "log_ch4", "log_co", "log_p_cloud", "radius")
UNITS = {"temperature": "K", "log_h2o": "log10 VMR", "log_co2": "log10 VMR", "log_ch4": "log10 VMR",
         "log_co": "log10 VMR", "log_p_cloud": "log10 Pa", "radius": "Jupiter radii"}
# uniform priors. Temperature: isothermal fits to hot-Jupiter limbs come out well below T_eq (MacDonald, Goyal &
# Lewis 2020, ApJL 893, L43); WASP-39b's T_eq is ~1170 K and a least-squares fit of this model to its PRISM
# spectrum lands near 420 K, so the box reaches down to 300 K. Abundances over 7 dex, cloud top 0.1 Pa to 10 bar.
PRIORS = {"temperature": (300.0, 2000.0), "log_h2o": (-8.0, -1.0), "log_co2": (-8.0, -1.0), "log_ch4": (-8.0, -1.0),
          "log_co": (-8.0, -1.0), "log_p_cloud": (-1.0, 6.0), "radius": (1.15, 1.40)}
CHUNK_FORMAT = 2  # 2: `mode` indexes mode_sets (a spectrum may hold several modes)


class Config(SourceConfig):
    n_spectra: int = Field(50_000, gt=0, description="spectra to simulate")
    chunk_size: int = Field(1000, gt=0, description="spectra per resumable chunk")
    batch_size: int = Field(50, gt=0, description="spectra per vectorised forward-model call")
    workers: int = Field(2, ge=1, description="processes")
    seed: int = Field(0, description="the same seed (and settings) gives the same spectra, whatever `workers`")
    modes: list[str] = Field(default_factory=lambda: ["prism", "g395h"], min_length=1,
                             description="instrument modes whose bins the set holds")
    mode_sets: list[list[str]] | None = Field(None, description="mode combinations a spectrum is observed in, "
                                              "drawn uniformly; default each mode alone and all together")
    priors: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(PRIORS),
                                                   description="uniform [low, high] per parameter")
    n_layers: int = Field(50, ge=10, description="atmosphere layers (log-spaced 10 bar .. 1e-9 bar)")
    noise_scale: float = Field(1.0, gt=0, description="multiplies the real error bars")
    work_dir: str | None = Field(None, description="chunk folder; default <root>/.work/spectra-sim")

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
        return v

    @model_validator(mode="after")
    def _sets_within_modes(self) -> Config:
        for group in self.mode_sets or []:
            extra = [m for m in group if m not in self.modes]
            if not group or extra:
                raise ValueError(f"mode set {group} is empty or names a mode not in modes {self.modes}")
        return self

    def observed_sets(self) -> list[list[str]]:
        """The mode combinations spectra are drawn in (each a subset of `modes`)."""
        if self.mode_sets is not None:
            return self.mode_sets
        return [[m] for m in self.modes] + ([list(self.modes)] if len(self.modes) > 1 else [])

    @field_validator("priors")
    @classmethod
    def _full_priors(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        out = {**PRIORS, **v}
        bad = [k for k in out if k not in PRIORS]
        if bad:
            raise ValueError(f"unknown parameter {bad[0]!r}; choose from {', '.join(PARAMETERS)}")
        if any(lo >= hi for lo, hi in out.values()):
            raise ValueError("each prior needs low < high")
        return out


def instrument_bins(modes: list[str]) -> dict[str, np.ndarray]:
    """The union of the modes' bins (sorted by mode, then wavelength) with their real depths and error bars."""
    obs = load_wasp39b()
    parts = []
    for k, mode in enumerate(modes):
        sel = np.isin(obs.instrument, MODES[mode])
        parts.append((np.full(sel.sum(), k), obs.wavelength[sel], obs.half_width[sel], obs.error[sel],
                      obs.depth[sel]))
    mode, wl, hw, err, depth = (np.concatenate(c) for c in zip(*parts, strict=True))
    return {"mode": mode.astype(np.int8), "wavelength_um": wl, "half_width_um": hw, "error": err,
            "observed_depth": depth}


_WORKER: dict[str, object] = {}


def binned_forward_model(wavelength: np.ndarray, half_width: np.ndarray, n_layers: int,
                         planet: Planet = WASP39B) -> tuple[ForwardModel, np.ndarray]:
    """The forward model over the instrument bins given by centre and half width [um], and its binning matrix
    (what `simulate` takes)."""
    lo, hi = wavelength - half_width, wavelength + half_width
    fm = ForwardModel(planet, wl_min=float(lo.min()) * 0.99, wl_max=float(hi.max()) * 1.01, n_layers=n_layers)
    return fm, bin_matrix(fm.wavelength, lo, hi)


def planet_record(planet: Planet) -> dict[str, float | str]:
    """The `planet` entry of simulation.json."""
    return {"radius_m": planet.radius_m, "mass_kg": planet.mass_kg, "star_radius_m": planet.star_radius_m,
            "p_base_pa": planet.p_base, "p_top_pa": planet.p_top, "fill": planet.fill}


def planet_from_record(record: dict) -> Planet:
    """The Planet a spectra-sim set was simulated for, from its simulation.json `planet` entry."""
    return Planet(radius_m=record["radius_m"], mass_kg=record["mass_kg"], star_radius_m=record["star_radius_m"],
                  fill=record["fill"], p_base=record["p_base_pa"], p_top=record["p_top_pa"])


def _init_worker(cfg_json: str) -> None:
    cfg = Config.model_validate_json(cfg_json)
    bins = instrument_bins(cfg.modes)
    fm, matrix = binned_forward_model(bins["wavelength_um"], bins["half_width_um"], cfg.n_layers)
    _WORKER.update(cfg=cfg, bins=bins, fm=fm, matrix=matrix)


def sample_priors(rng: np.random.Generator, priors: dict[str, tuple[float, float]], n: int) -> np.ndarray:
    return np.stack([rng.uniform(*priors[p], size=n) for p in PARAMETERS], axis=1)


def simulate(fm: ForwardModel, matrix: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Noise-free binned depths (n, nbins) for parameter rows in PARAMETERS order."""
    p = {name: params[:, i] for i, name in enumerate(PARAMETERS)}
    log_vmr = {"H2O": p["log_h2o"], "CO2": p["log_co2"], "CH4": p["log_ch4"], "CO": p["log_co"]}
    depth = fm.depth(isothermal(p["temperature"], fm.pressure), log_vmr, radius_m=p["radius"] * R_JUP,
                     log_p_cloud=p["log_p_cloud"])
    return depth @ matrix.T


def _chunk(index: int) -> bytes:
    """One chunk: parameters, mode, noise-free and noisy depths, the noise model; deterministic per (seed, index)."""
    cfg: Config = _WORKER["cfg"]  # type: ignore[assignment]
    bins: dict[str, np.ndarray] = _WORKER["bins"]  # type: ignore[assignment]
    n = min(cfg.chunk_size, cfg.n_spectra - index * cfg.chunk_size)
    rng = np.random.default_rng([cfg.seed, index])
    params = sample_priors(rng, cfg.priors, n)
    sets = cfg.observed_sets()
    mode = rng.integers(0, len(sets), size=n).astype(np.int8)
    clean = np.concatenate([simulate(_WORKER["fm"], _WORKER["matrix"], params[i:i + cfg.batch_size])  # type: ignore[arg-type]
                            for i in range(0, n, cfg.batch_size)])
    set_mask = np.stack([np.isin(bins["mode"], [cfg.modes.index(m) for m in group]) for group in sets])
    mask = set_mask[mode]
    error = np.broadcast_to(bins["error"] * cfg.noise_scale, clean.shape)
    noisy = clean + rng.standard_normal(clean.shape) * error
    buf = io.BytesIO()
    np.savez(buf, format=np.array(CHUNK_FORMAT), index=np.array(index), params=params.astype(np.float64),
             mode=mode, mask=mask, depth_true=clean, depth=np.where(mask, noisy, np.nan))
    return buf.getvalue()


def _settings_digest(cfg: Config) -> str:
    # n_spectra is not part of it: raising it reuses the chunks already made (each chunk is checked for its size)
    keep = cfg.model_dump(exclude={"workers", "work_dir", "http", "max_invalid_share", "batch_size", "n_spectra"})
    keep["chunk_format"] = CHUNK_FORMAT
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _work_dir(ctx: Context, cfg: Config) -> Path:
    base = Path(cfg.work_dir) if cfg.work_dir else Path(resolve_root(ctx.store.root)) / ".work" / "spectra-sim"
    if "://" in str(base) and not str(base).startswith("file://"):
        raise DataError("spectra-sim keeps its resumable chunks on a local disk; set spectra-sim.work_dir in --config")
    return base.expanduser() / _settings_digest(cfg)


def _read_chunk(path: Path, rows: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            chunk = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None  # absent or damaged: computed again
    return chunk if len(chunk.get("params", ())) == rows else None


def build(ctx: Context) -> Product:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode != "live":
        raise DataError("spectra-sim simulates; run it without --from-snapshot/--from-file")
    sets = cfg.observed_sets()
    work = _work_dir(ctx, cfg)
    work.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-cfg.n_spectra // cfg.chunk_size)
    paths = [work / f"chunk-{i:05d}.npz" for i in range(n_chunks)]
    rows = [min(cfg.chunk_size, cfg.n_spectra - i * cfg.chunk_size) for i in range(n_chunks)]
    todo = [i for i, p in enumerate(paths) if _read_chunk(p, rows[i]) is None]
    ctx.log.info("chunks", extra={"total": n_chunks, "reused": n_chunks - len(todo), "work_dir": str(work)})
    if todo:
        cfg_json = cfg.model_dump_json()
        if cfg.workers == 1:
            _init_worker(cfg_json)
            for i in track(todo, "spectra-sim chunks"):
                write_local_atomic(paths[i], _chunk(i))
        else:
            with ProcessPoolExecutor(cfg.workers, initializer=_init_worker, initargs=(cfg_json,)) as pool:
                for i, data in track(zip(todo, pool.map(_chunk, todo), strict=True), "spectra-sim chunks",
                                     total=len(todo)):
                    write_local_atomic(paths[i], data)
    chunks = [_read_chunk(p, r) for p, r in zip(paths, rows, strict=True)]
    if any(c is None for c in chunks):
        raise DataError(f"a chunk in {work} is unreadable after writing; rerun `astrobio-data run spectra-sim`")
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in ("params", "mode", "mask", "depth_true", "depth")}  # type: ignore[index]
    good = np.isfinite(merged["depth_true"]).all(axis=1) & np.isfinite(merged["params"]).all(axis=1)
    bad = int((~good).sum())
    if bad > cfg.max_invalid_share * len(good):
        raise DataError(f"spectra-sim: {bad} of {len(good)} spectra are not finite (above max_invalid_share "
                        f"{cfg.max_invalid_share}); narrow `priors` in --config")
    bins = instrument_bins(cfg.modes)
    shards = []
    per_shard = 10_000
    idx = np.nonzero(good)[0]
    for k, start in enumerate(range(0, len(idx), per_shard)):
        sel = idx[start:start + per_shard]
        buf = io.BytesIO()
        np.savez(buf, params=merged["params"][sel], mode=merged["mode"][sel], mask=merged["mask"][sel],
                 depth=np.nan_to_num(merged["depth"][sel]), depth_true=merged["depth_true"][sel],
                 error=np.where(merged["mask"][sel], bins["error"][None] * cfg.noise_scale, 0.0))
        shards.append(Shard(f"spectra-{k:03d}.npz", buf.getvalue(), rows=len(sel)))
    qbuf = io.BytesIO()
    np.savez(qbuf, params=merged["params"][~good], index=np.nonzero(~good)[0])
    bbuf = io.BytesIO()
    np.savez(bbuf, **bins)
    meta = {"parameters": list(PARAMETERS), "units": UNITS, "priors": {k: list(v) for k, v in cfg.priors.items()},
            "modes": cfg.modes, "mode_sets": sets, "planet": planet_record(WASP39B),
            "noise": {"kind": "gaussian, independent per bin", "sigma": "real WASP-39b error bar x noise_scale",
                      "noise_scale": cfg.noise_scale},
            "seed": cfg.seed, "n_layers": cfg.n_layers, "temperature_profile": "isothermal"}
    shards += [
        Shard("bins.npz", bbuf.getvalue(), rows=len(bins["mode"])),
        Shard("quarantine.npz", qbuf.getvalue(), rows=bad),
        Shard.json("simulation.json", meta),
        card("spectra-sim: simulated JWST transmission spectra of a WASP-39b-like planet",
             source=["datajobs.forward_model (isothermal, H2O/CO2/CH4 Exo-Transmit tables, CO line list, "
                     "H2-H2/H2-He CIA, Rayleigh, grey cloud deck)",
                     "bins and error bars: JWST ERS WASP-39b (pyratbay compilation; NIRSpec PRISM: Rustamkulov et "
                     "al. 2023; G395H: Alderson et al. 2023)"],
             rows={"spectra": int(good.sum()), "bins (all modes)": len(bins["mode"])},
             quarantined={"non-finite spectrum": bad},
             columns=[("params", "float64 (n, 7)", "; ".join(f"{p} [{UNITS[p]}]" for p in PARAMETERS)),
                      ("mode", "int8 (n,)", "index into the mode sets: " + "; ".join("+".join(g) for g in sets)),
                      ("mask", "bool (n, bins)", "bins observed in this spectrum's mode set"),
                      ("depth", "float64 (n, bins)", "noisy transit depth (Rp/Rs)^2, 0 where masked"),
                      ("depth_true", "float64 (n, bins)", "noise-free depth"),
                      ("error", "float64 (n, bins)", "1-sigma noise of each bin, 0 where masked")],
             notes=["Priors (uniform): " + ", ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in cfg.priors.items()),
                    "Not modelled: SO2, Na, K, NH3, HCN, H2S, CO outside 2.27-2.44 and 4.35-5.0 um, hazes, "
                    "refraction, stellar contamination, 3-D effects.", f"seed {cfg.seed}: chunk i draws from "
                    "numpy default_rng([seed, i]), so the set does not depend on `workers`."],
             license=["Opacities: Freedman et al. 2008/2014, Lupu et al. 2014, Kempton et al. 2017 (Exo-Transmit); "
                      "HITRAN/HITEMP CO (Gordon et al. 2022; Li et al. 2015); Borysow CIA. JWST data: ERS program "
                      "1366 (cite the papers above)."]),
    ]
    source = {"kind": "simulation", "simulator": "datajobs.forward_model", "settings_digest": _settings_digest(cfg),
              "config": json.loads(cfg.model_dump_json(exclude={"http", "work_dir"}))}
    return Product(shards, source, rows_fetched=len(good), rows_quarantined=bad,
                   extra={"quarantine": {"rows": bad}})
