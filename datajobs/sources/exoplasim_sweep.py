"""exoplasim-sweep: run the ExoPlaSim GCM over a space-filling design of planets and publish their climates.

Design: a scrambled Sobol sequence (scipy.stats.qmc) over eight dimensions -- stellar flux, the star's
spectrum (the Sun or one of the M-dwarf spectra ExoPlaSim ships), synchronous rotation or not, rotation
period, surface pressure, pCO2, gravity, radius and surface type (aquaplanet or Earth land) -- mapped onto
the ranges in `Config`. Every run uses a circular orbit with zero obliquity (no seasons), so the mean of the
kept period estimates the planet's equilibrium climate once the spin-up has removed the initial state.

Each run: spin up `spinup_days` model days (warm-started from the restart of the nearest finished run with
the same rotation regime and surface type, else from ExoPlaSim's isothermal start), then keep `keep_months`
months of `month_days` days as monthly means of the habitability variables (VARIABLES_2D on the surface,
VARIABLES_3D on the 10 sigma levels). Each run executes in its own subprocess (`python -m
datajobs.sources.exoplasim_sweep SPEC.json`), `workers` at a time. A finished run is renamed whole into the
cache (`<cache_dir>/<run id>/`), so a killed or re-run sweep re-runs only unfinished runs and never loses a
finished one; the run id hashes the parameters, the settings and the ExoPlaSim version.

ExoPlaSim (Paradise et al. 2022, PSJ 3, 1; GPL-3.0) is an optional extra (`pip install 'astrobio-train[climate]'`)
that compiles its Fortran core with gfortran at first use; it is invoked, never vendored.
`--from-snapshot` publishes the runs bundled under datajobs/snapshots/exoplasim_sweep/ (see its PROVENANCE.md).

Per-index mode (`count`, for a Kubernetes Indexed Job with count + 1 completions on a shared cache_dir): index
i < count runs the design points j with j % count == i into the cache and records its share done
(`<cache_dir>/.shares/<design key>/<i>.json`, atomically); index count waits for every share, then publishes
the dataset once (manifest last); a rerun with identical runs publishes nothing new.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import AstrobioError, DataError, MissingExtraError
from datajobs.job import Context, Product, snapshot_path
from datajobs.store import Shard, write_local_atomic

DESCRIPTION = "ExoPlaSim GCM sweep over stellar flux, star, rotation, atmosphere, gravity, radius, surface"
SNAPSHOT = snapshot_path("exoplasim_sweep", "runs.json")
EXOPLASIM_VERSION = "3.4.2"
STARS = ("sun", "gj667", "k2", "trap", "wolf")  # "sun": ExoPlaSim's default solar spectrum; others: stellarspectra/
VARIABLES_2D = ("ts", "tas", "pr", "clt", "rst", "rlut", "rsut", "ntr", "sic")
VARIABLES_3D = ("ta", "ua", "va", "hus")
UNITS = {
    "ts": "K", "tas": "K", "pr": "m s-1", "clt": "1", "rst": "W m-2", "rlut": "W m-2", "rsut": "W m-2",
    "ntr": "W m-2", "sic": "1", "ta": "K", "ua": "m s-1", "va": "m s-1", "hus": "kg kg-1",
}
MEANINGS = {
    "ts": "surface temperature", "tas": "air temperature at 2 m", "pr": "precipitation",
    "clt": "cloud area fraction", "rst": "top-of-atmosphere net (absorbed) short-wave flux, downward positive",
    "rlut": "top-of-atmosphere net long-wave flux (negative: outgoing)",
    "rsut": "top-of-atmosphere reflected short-wave flux", "ntr": "net top radiation (rst + rlut)",
    "sic": "sea-ice cover", "ta": "air temperature on sigma levels", "ua": "eastward wind on sigma levels",
    "va": "northward wind on sigma levels", "hus": "specific humidity on sigma levels",
}
PARAMETERS = ("flux", "star", "synchronous", "rotation_period", "pressure", "pco2", "gravity", "radius",
              "aquaplanet")
PARAMETER_UNITS = {"flux": "W m-2", "star": "", "synchronous": "", "rotation_period": "days", "pressure": "bar",
                   "pco2": "bar", "gravity": "m s-2", "radius": "Earth radii", "aquaplanet": "",
                   "star_wien_teff": "K"}
WORKER_MODULE = "datajobs.sources.exoplasim_sweep"


class Config(SourceConfig):
    runs: int = Field(40, ge=1, description="design points (Sobol; the first `runs` of a 2^k sequence)")
    seed: int = Field(12, description="Sobol scrambling seed")
    flux: tuple[float, float] = Field((900.0, 1700.0), description="stellar flux at the planet [W m-2]")
    stars: list[str] = Field(default_factory=lambda: list(STARS), description=f"spectra drawn from {STARS}")
    synchronous_share: float = Field(0.5, ge=0, le=1, description="share of synchronous rotators")
    rotation_days: tuple[float, float] = Field((0.5, 3.0), description="rotation period, free rotators [days]")
    synchronous_rotation_days: tuple[float, float] = Field((4.0, 30.0), description="synchronous period [days]")
    pressure_bar: tuple[float, float] = Field((0.5, 3.0), description="surface pressure (N2 + CO2) [bar]")
    pco2_bar: tuple[float, float] = Field((1e-4, 1e-2), description="CO2 partial pressure, log-uniform [bar]")
    gravity: tuple[float, float] = Field((6.0, 15.0), description="surface gravity [m s-2]")
    radius: tuple[float, float] = Field((0.7, 1.6), description="planet radius [Earth radii]")
    aquaplanet_share: float = Field(0.5, ge=0, le=1, description="share of aquaplanets (else Earth's land)")
    spinup_days: int = Field(720, ge=1, description="model days before the kept period")
    cold_spinup_days: int | None = Field(None, ge=1, description="spin-up without a warm start (default: same)")
    keep_months: int = Field(12, ge=1, description="months kept as monthly means")
    month_days: int = Field(30, ge=1, description="model days per kept month")
    output_days: int = Field(1, ge=1, description="days between raw outputs that the monthly means average")
    mixed_layer_m: float = Field(5.0, gt=0, description="ocean mixed-layer depth [m]")
    timestep_min: float = Field(45.0, gt=0, description="model time step [minutes]")
    workers: int = Field(1, ge=1, description="runs in parallel (one core each)")
    cache_dir: Path = Field(Path(".cache/exoplasim-sweep"), description="finished runs; survives kills")
    stop_after_s: float | None = Field(None, gt=0, description="start no new run after this many seconds")
    run_timeout_s: float = Field(7200.0, gt=0, description="a run taking longer is killed and reported")
    count: int | None = Field(None, ge=1, description="shares the design is split into, one per index of an "
                              "Indexed Job with count + 1 completions (unset: this process runs and publishes all)")
    index: int | None = Field(None, ge=0, description="with count: 0..count-1 runs design points i with "
                              "i % count == index, count publishes once every share is done; default "
                              "$JOB_COMPLETION_INDEX")
    publish_wait_s: float = Field(172800.0, gt=0, description="the publish index waits this long for the shares")


# -- the design ----------------------------------------------------------------------------------
def design(cfg: Config) -> list[dict[str, Any]]:
    """The parameter sets of the sweep, in design order (deterministic for a seed)."""
    from scipy.stats import qmc

    unknown = [s for s in cfg.stars if s not in STARS]
    if unknown:
        raise DataError(f"exoplasim-sweep: unknown star {unknown[0]!r}; ExoPlaSim ships {', '.join(STARS)}")
    u = qmc.Sobol(d=9, scramble=True, seed=cfg.seed).random(2 ** max(1, math.ceil(math.log2(cfg.runs))))[: cfg.runs]

    def lin(x: float, lo_hi: tuple[float, float]) -> float:
        return lo_hi[0] + x * (lo_hi[1] - lo_hi[0])

    def log(x: float, lo_hi: tuple[float, float]) -> float:
        return float(10 ** lin(x, (math.log10(lo_hi[0]), math.log10(lo_hi[1]))))

    points = []
    for row in u:
        sync = bool(row[2] < cfg.synchronous_share)
        points.append({
            "flux": round(lin(row[0], cfg.flux), 2),
            "star": cfg.stars[min(int(row[1] * len(cfg.stars)), len(cfg.stars) - 1)],
            "synchronous": sync,
            "rotation_period": round(log(row[3], cfg.synchronous_rotation_days if sync else cfg.rotation_days), 4),
            "pressure": round(lin(row[4], cfg.pressure_bar), 4),
            "pco2": float(f"{log(row[5], cfg.pco2_bar):.4g}"),
            "gravity": round(lin(row[6], cfg.gravity), 3),
            "radius": round(lin(row[7], cfg.radius), 3),
            "aquaplanet": bool(row[8] < cfg.aquaplanet_share),
        })
    return points


def settings_of(cfg: Config) -> dict[str, Any]:
    """The model settings every run shares (part of each run id and of the manifest)."""
    return {
        "exoplasim_version": EXOPLASIM_VERSION, "resolution": "T21", "layers": 10, "precision": 4, "ncpus": 1,
        "timestep_min": cfg.timestep_min, "spinup_days": cfg.spinup_days,
        "cold_spinup_days": cfg.cold_spinup_days or cfg.spinup_days, "keep_months": cfg.keep_months,
        "month_days": cfg.month_days, "output_days": cfg.output_days, "mixed_layer_m": cfg.mixed_layer_m,
        "obliquity": 0.0, "eccentricity": 0.0, "ozone": False, "substellar_lon": 180.0,
        "physicsfilter_synchronous": "gp|exp|sp", "variables_2d": list(VARIABLES_2D),
        "variables_3d": list(VARIABLES_3D),
    }


def run_id(params: dict[str, Any], settings: dict[str, Any]) -> str:
    blob = json.dumps({"params": params, "settings": settings}, sort_keys=True).encode()
    return "r" + hashlib.sha256(blob).hexdigest()[:12]


def unit_coords(params: dict[str, Any], cfg: Config) -> np.ndarray:
    """Parameters scaled to [0, 1] (log for periods and pCO2), for the nearest-run warm start."""
    def scaled(x: float, lo_hi: tuple[float, float], logscale: bool = False) -> float:
        lo, hi = (math.log(lo_hi[0]), math.log(lo_hi[1])) if logscale else lo_hi
        return ((math.log(x) if logscale else x) - lo) / (hi - lo)

    rot = cfg.synchronous_rotation_days if params["synchronous"] else cfg.rotation_days
    return np.array([
        scaled(params["flux"], cfg.flux), scaled(params["rotation_period"], rot, True),
        scaled(params["pressure"], cfg.pressure_bar), scaled(params["pco2"], cfg.pco2_bar, True),
        scaled(params["gravity"], cfg.gravity), scaled(params["radius"], cfg.radius),
        0.0 if params["star"] == "sun" else 1.0,
    ])


# -- dependencies --------------------------------------------------------------------------------
def check_dependencies() -> None:
    """One line naming the fix when the extra or gfortran is missing."""
    if importlib.util.find_spec("exoplasim") is None:
        raise MissingExtraError("exoplasim (the ExoPlaSim GCM)", "climate")
    if shutil.which("gfortran") is None:
        raise DataError("gfortran is not on PATH; ExoPlaSim compiles its Fortran core with it: install it "
                        "(`apt-get install gfortran` on Debian/Ubuntu) and rerun `astrobio-data run exoplasim-sweep`")


# -- one run (in its own process: ExoPlaSim changes the working directory) ---------------------------
def _ensure_pyfft(package_dir: Path) -> None:
    """ExoPlaSim's postprocessor needs its f2py FFT module; build it once (meson backend) if absent."""
    if importlib.util.find_spec("exoplasim.pyfft") is not None:
        return
    subprocess.run([sys.executable, "-m", "numpy.f2py", "-c", "pyfft.f90", "-m", "pyfft", "--backend", "meson"],
                   cwd=package_dir, check=True, capture_output=True)


def execute(spec: dict[str, Any]) -> None:
    """Run one design point as `spec` describes and rename its result into `spec['final_dir']`."""
    import exoplasim as exo

    params, settings = spec["params"], spec["settings"]
    partial = Path(spec["partial_dir"])
    workdir = partial / "model"
    package_dir = Path(exo.__file__).parent
    _ensure_pyfft(package_dir)
    started = time.time()
    model = exo.Model(workdir=str(workdir), modelname=spec["id"], resolution=settings["resolution"],
                      layers=settings["layers"], ncpus=settings["ncpus"], precision=settings["precision"],
                      outputtype=".nc", crashtolerant=True)
    steps_per_day = round(1440.0 / settings["timestep_min"])
    spinup = settings["spinup_days"] if spec.get("restart") else settings["cold_spinup_days"]
    kwargs: dict[str, Any] = {
        "flux": params["flux"], "pN2": params["pressure"] - params["pco2"], "pCO2": params["pco2"],
        "gravity": params["gravity"], "radius": params["radius"], "rotationperiod": params["rotation_period"],
        "synchronous": params["synchronous"], "substellarlon": settings["substellar_lon"],
        "aquaplanet": params["aquaplanet"], "obliquity": settings["obliquity"],
        "eccentricity": settings["eccentricity"], "ozone": settings["ozone"], "mldepth": settings["mixed_layer_m"],
        "timestep": settings["timestep_min"], "runsteps": spinup * steps_per_day,
        "snapshots": 0,
        "otherargs": {"NSTPW@plasim_namelist": str(steps_per_day * settings["output_days"]),
                      "NSNAPSHOT@plasim_namelist": "0"},
    }
    if params["star"] != "sun":
        # PlaSim reads the spectrum path into a short Fortran string: give it a short copy.
        short = Path(tempfile.mkdtemp(prefix="xps", dir="/tmp"))
        for suffix in (".dat", "_hr.dat"):
            shutil.copyfile(package_dir / "stellarspectra" / f"{params['star']}{suffix}", short / f"s{suffix}")
        kwargs["starspec"] = str(short / "s.dat")
    if params["synchronous"]:
        kwargs["physicsfilter"] = settings["physicsfilter_synchronous"]
    if spec.get("restart"):
        kwargs["restartfile"] = spec["restart"]
    try:
        model.configure(**kwargs)
        model.exportcfg()
        model.run(years=1, postprocess=False, crashifbroken=False, clean=True)
        spun_up = time.time()
        keep_days = settings["keep_months"] * settings["month_days"]
        model.modify(runsteps=keep_days * steps_per_day)
        model.cfgpostprocessor(ftype="regular", extension=".nc", variables=[*settings["variables_2d"],
                                                                            *settings["variables_3d"]],
                               times=settings["keep_months"])
        model.run(years=1, postprocess=True, crashifbroken=False, clean=True)
        finished = time.time()
    finally:
        if "starspec" in kwargs:
            shutil.rmtree(Path(kwargs["starspec"]).parent, ignore_errors=True)
    arrays, coords = _read_output(workdir / "MOST.00001.nc", settings)
    restart = workdir / "MOST_REST.00001"
    if not restart.exists():
        raise RuntimeError(f"ExoPlaSim wrote no restart file {restart}")
    out = partial / "out"
    out.mkdir()
    shutil.copyfile(restart, out / "restart")
    _write_npz(out / "fields.npz", arrays)
    meta = {"id": spec["id"], "params": params, "settings": settings, "warm_start_from": spec.get("warm_from"),
            "spinup_days_run": spinup, "wall_s": round(finished - started, 1),
            "spinup_wall_s": round(spun_up - started, 1), "coords": coords}
    write_local_atomic(out / "meta.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    os.replace(out, spec["final_dir"])  # the run appears finished whole, or not at all


def _read_output(path: Path, settings: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        arrays = {v: np.asarray(nc.variables[v][:], dtype=np.float32)
                  for v in (*settings["variables_2d"], *settings["variables_3d"])}
        arrays["lsm"] = np.asarray(nc.variables["lsm"][:], dtype=np.float32)[0] if "lsm" in nc.variables else None
        coords = {c: np.asarray(nc.variables[c][:], dtype=np.float64).tolist() for c in ("lat", "lon", "lev")}
    if arrays["lsm"] is None:
        del arrays["lsm"]
    bad = [k for k, a in arrays.items() if not np.isfinite(a).all()]
    if bad:
        raise RuntimeError(f"non-finite values in {', '.join(bad)}")
    months = arrays["ts"].shape[0]
    if months != settings["keep_months"]:
        raise RuntimeError(f"expected {settings['keep_months']} monthly means, the postprocessor wrote {months}")
    return arrays, coords


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_local_atomic(path, buf.getvalue())


# -- the sweep -----------------------------------------------------------------------------------
def finished_runs(cache: Path) -> dict[str, dict[str, Any]]:
    """Every finished run in the cache: id -> meta."""
    found = {}
    if cache.exists():
        for d in sorted(cache.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").exists():
                found[d.name] = json.loads((d / "meta.json").read_text())
    return found


def sweep(cfg: Config, log, share: tuple[int, int] | None = None
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Run every unfinished design point (with SHARE = (index, count), those with i % count == index); returns
    (finished metas in design order, failures, wall seconds)."""
    settings = settings_of(cfg)
    cache = cfg.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if share is None:  # a killed run's scratch; its finished neighbours are untouched
        for stale in cache.glob(".partial-*"):  # (shares running beside this one own theirs)
            shutil.rmtree(stale, ignore_errors=True)
    points = [(run_id(p, settings), p) for p in design(cfg)]
    if share is not None:
        points = [pt for i, pt in enumerate(points) if i % share[1] == share[0]]
    done = finished_runs(cache)
    todo = [(i, p) for i, p in points if i not in done]
    log.info("sweep", extra={"runs": len(points), "cached": len(points) - len(todo), "to_run": len(todo)})
    started = time.time()
    running: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    failures: list[dict[str, Any]] = []
    queue = list(todo)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # a terminated sweep also stops its runs
    try:
        while queue or running:
            may_start = cfg.stop_after_s is None or time.time() - started < cfg.stop_after_s
            while queue and len(running) < cfg.workers and may_start:
                rid, params = queue.pop(0)
                running[rid] = _launch(rid, params, settings, cache, finished_runs(cache), cfg)
            if not may_start and queue:
                log.info("stop_after_s reached: not starting the remaining runs", extra={"left": len(queue)})
                queue.clear()
            time.sleep(0.5)
            for rid, (proc, t0, partial) in list(running.items()):
                timed_out = time.time() - t0 > cfg.run_timeout_s
                if proc.poll() is None and not timed_out:
                    continue
                if timed_out:
                    _kill_group(proc)
                del running[rid]
                if (cache / rid / "meta.json").exists():
                    log.info("run finished", extra={"run": rid, "wall_s": round(time.time() - t0, 1)})
                else:
                    why = "timed out" if timed_out else f"exit {proc.returncode}"
                    kept = cache / f".failed-{rid}.log"  # the worker's log stays for inspection
                    if (partial / "worker.log").exists():
                        shutil.move(partial / "worker.log", kept)
                    tail = kept.read_text(errors="replace").strip().splitlines() if kept.exists() else []
                    failures.append({"id": rid, "params": dict(points)[rid], "why": why,
                                     "log_tail": tail[-1][:300] if tail else "", "log": str(kept)})
                    log.warning("run failed", extra={"run": rid, "why": why, "log": str(kept)})
                shutil.rmtree(partial, ignore_errors=True)
    except KeyboardInterrupt:
        kept = len(finished_runs(cache))
        raise SweepInterrupted(f"exoplasim-sweep interrupted: {kept} finished runs kept in {cache}; rerun "
                               "`astrobio-data run exoplasim-sweep` with the same config to continue") from None
    finally:
        for proc, _, partial in running.values():  # interrupted: stop the runs, keep what finished
            _kill_group(proc)
            shutil.rmtree(partial, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    done = finished_runs(cache)
    return [done[i] for i, _ in points if i in done], failures, time.time() - started


class SweepInterrupted(AstrobioError):
    """SIGTERM/SIGINT: running runs were stopped, finished runs stay cached (exit 143)."""

    exit_code = 143


def nearest_finished(params: dict[str, Any], settings: dict[str, Any], done: dict[str, dict[str, Any]],
                     cfg: Config) -> str | None:
    """The finished run (same settings, rotation regime and surface type) nearest in scaled parameters."""
    same = {k: m for k, m in done.items() if m["settings"] == settings
            and m["params"]["synchronous"] == params["synchronous"]
            and m["params"]["aquaplanet"] == params["aquaplanet"]}
    if not same:
        return None
    here = unit_coords(params, cfg)
    return min(same, key=lambda k: float(np.linalg.norm(unit_coords(same[k]["params"], cfg) - here)))


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill a run's worker and the model executable it started (ExoPlaSim runs it through a shell)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _launch(rid: str, params: dict[str, Any], settings: dict[str, Any], cache: Path,
            done: dict[str, dict[str, Any]], cfg: Config) -> tuple[subprocess.Popen, float, Path]:
    partial = cache / f".partial-{rid}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    warm = nearest_finished(params, settings, done, cfg)
    spec = {"id": rid, "params": params, "settings": settings, "partial_dir": str(partial),
            "final_dir": str(cache / rid), "warm_from": warm,
            "restart": str(cache / warm / "restart") if warm else None}
    (partial / "spec.json").write_text(json.dumps(spec, indent=2))
    log_file = open(partial / "worker.log", "wb")  # noqa: SIM115 - the child owns it until it exits
    proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(partial / "spec.json")],
                            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=True)  # its own process group: the Fortran model dies with it
    log_file.close()
    return proc, time.time(), partial


# -- publishing ----------------------------------------------------------------------------------
def star_wien_teff(star: str) -> float:
    """Effective temperature implied by the peak of the shipped spectrum (Wien's law); 5772 K for the Sun."""
    if star == "sun":
        return 5772.0
    import exoplasim

    path = Path(exoplasim.__file__).parent / "stellarspectra" / f"{star}.dat"
    table = np.loadtxt(path, skiprows=1)
    return round(2897.77 / float(table[np.argmax(table[:, 1]), 0]), 0)


def run_table(metas: list[dict[str, Any]]) -> pa.Table:
    cols: dict[str, list[Any]] = {"run_id": [m["id"] for m in metas]}
    for p in PARAMETERS:
        cols[p] = [m["params"][p] for m in metas]
    cols["star_wien_teff"] = [m["params"].get("star_wien_teff") for m in metas]
    for key in ("kind", "warm_start_from", "spinup_days_run", "wall_s", "months"):
        cols[key] = [m.get(key) for m in metas]
    return pa.table(cols)


def product_of(metas: list[dict[str, Any]], fields: dict[str, dict[str, np.ndarray]], source: dict[str, Any],
               source_lines: list[str], notes: list[str], extra: dict[str, Any]) -> Product:
    """Shards: runs.parquet (one row per run), grid.json (coordinates, units), runs/<id>.npz (monthly means)."""
    coords = metas[0]["coords"]
    for m in metas:
        m["months"] = int(fields[m["id"]]["ts"].shape[0])
    table = run_table(metas)
    shards = [Shard.parquet("runs.parquet", table),
              Shard.json("grid.json", {**coords, "units": UNITS, "meanings": MEANINGS,
                                       "parameter_units": PARAMETER_UNITS, "variables_2d": list(VARIABLES_2D),
                                       "variables_3d": list(VARIABLES_3D)})]
    for m in metas:
        buf = io.BytesIO()
        np.savez_compressed(buf, **fields[m["id"]])
        shards.append(Shard(f"runs/{m['id']}.npz", buf.getvalue(), rows=None))
    columns = [(p, "", PARAMETER_UNITS.get(p, "")) for p in table.column_names]
    columns += [(v, "field", f"{MEANINGS[v]} [{UNITS[v]}]") for v in (*VARIABLES_2D, *VARIABLES_3D)]
    shards.append(card(
        "exoplasim-sweep: ExoPlaSim T21 climates of a planet design",
        source=source_lines, rows={"runs": len(metas)}, quarantined={f["why"]: 1 for f in extra.get("failed", [])},
        columns=columns, notes=notes,
        license=["ExoPlaSim is GPL-3.0 (Paradise et al. 2022, PSJ 3, 1); its output is data produced here."],
    ))
    manifest_runs = [{k: m.get(k) for k in ("id", "params", "kind", "warm_start_from", "spinup_days_run",
                                             "wall_s", "months", "settings")} for m in metas]
    return Product(shards=shards, source=source, rows_fetched=len(metas),
                   rows_quarantined=len(extra.get("failed", [])),
                   extra={"run_count": len(metas), "runs": manifest_runs, **extra})


# -- per-index mode (an Indexed Job): shares 0..count-1 run, index count publishes ---------------------
def share_of(cfg: Config) -> tuple[int, int] | None:
    """(index, count) of this process, or None when it runs the whole design; index from $JOB_COMPLETION_INDEX
    unless the config names it."""
    if cfg.count is None:
        return None
    index = cfg.index
    if index is None:
        raw = os.environ.get("JOB_COMPLETION_INDEX")
        if raw is None or not raw.isdigit():
            raise DataError(f"exoplasim-sweep: count={cfg.count} but no index: set index in the config or run as an "
                            "Indexed Job (JOB_COMPLETION_INDEX)")
        index = int(raw)
    if index > cfg.count:
        raise DataError(f"exoplasim-sweep: index {index} is beyond count {cfg.count} (shares 0..{cfg.count - 1}, "
                        f"then {cfg.count} publishes): the Indexed Job needs completions = count + 1")
    return index, cfg.count


def _shares_dir(cfg: Config) -> Path:
    """Where the shares of this design (its run ids and count) record that they are done."""
    ids = [run_id(p, settings_of(cfg)) for p in design(cfg)]
    key = hashlib.sha256(json.dumps({"ids": ids, "count": cfg.count}).encode()).hexdigest()[:12]
    return cfg.cache_dir.resolve() / ".shares" / key


def run_share(cfg: Config, index: int, count: int, log) -> None:
    """Run this share's design points into the shared cache, then record the share as done (atomically)."""
    metas, failures, wall = sweep(cfg, log, (index, count))
    done = _shares_dir(cfg)
    done.mkdir(parents=True, exist_ok=True)
    record = {"index": index, "count": count, "finished": [m["id"] for m in metas], "failed": failures,
              "wall_s": round(wall, 1)}
    write_local_atomic(done / f"{index}.json", (json.dumps(record, indent=2) + "\n").encode())
    log.info("share done", extra={"share": index, "count": count, "finished": len(metas), "failed": len(failures),
                                  "publisher_index": count})


def wait_for_shares(cfg: Config, count: int, log) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """The publish index: wait until every share recorded itself done; (finished metas, failures, wall)."""
    done, started = _shares_dir(cfg), time.time()
    while True:
        records = {}
        for i in range(count):
            with contextlib.suppress(FileNotFoundError):
                records[i] = json.loads((done / f"{i}.json").read_text())
        if len(records) == count:
            break
        if time.time() - started > cfg.publish_wait_s:
            missing = sorted(set(range(count)) - set(records))
            raise DataError(f"exoplasim-sweep: shares {missing} of {count} not done after publish_wait_s="
                            f"{cfg.publish_wait_s:g} s; see their pods' logs, rerun them, then this index")
        time.sleep(2)
    log.info("every share done: publishing", extra={"count": count})
    ids = [run_id(p, settings_of(cfg)) for p in design(cfg)]
    finished = finished_runs(cfg.cache_dir.resolve())
    failures = [f for r in records.values() for f in r["failed"] if f["id"] not in finished]
    return [finished[i] for i in ids if i in finished], failures, sum(r["wall_s"] for r in records.values())


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode == "snapshot":
        return _from_snapshot(ctx)
    if ctx.mode == "file":
        raise DataError("exoplasim-sweep takes no --from-file; run it live (`astrobio-data run exoplasim-sweep`) "
                        "or publish the bundled runs with --from-snapshot")
    share = share_of(cfg)
    if share is not None and share[0] == share[1]:
        metas, failures, wall = wait_for_shares(cfg, share[1], ctx.log)
    else:
        check_dependencies()
        if share is not None:
            run_share(cfg, *share, ctx.log)
            return None  # nothing published by a share: the dataset stays as it is until the publish index
        metas, failures, wall = sweep(cfg, ctx.log)
    if not metas:
        first = failures[0] if failures else {"why": "no run finished", "log_tail": ""}
        raise DataError(f"exoplasim-sweep: no run finished ({len(failures)} failed; first: {first['why']} "
                        f"{first['log_tail']}); see {cfg.cache_dir}")
    fields = {}
    for m in metas:
        with np.load(cfg.cache_dir / m["id"] / "fields.npz", allow_pickle=False) as z:
            fields[m["id"]] = {k: z[k] for k in z.files}
        m["kind"] = "sweep"
        m["params"] = {**m["params"], "star_wien_teff": star_wien_teff(m["params"]["star"])}
    settings = settings_of(cfg)
    source = {"kind": "simulation", "model": f"exoplasim=={EXOPLASIM_VERSION}", "settings": settings,
              "design": {"kind": "sobol", "seed": cfg.seed, "runs": cfg.runs,
                         "ranges": cfg.model_dump(mode="json", include={
                             "flux", "stars", "synchronous_share", "rotation_days", "synchronous_rotation_days",
                             "pressure_bar", "pco2_bar", "gravity", "radius", "aquaplanet_share"})}}
    notes = [f"{len(metas)} of {cfg.runs} design runs finished; {len(failures)} failed (listed in the manifest).",
             "Runs already in the cache are reused; the manifest records this call's wall time (sweep_wall_s)."]
    return product_of(metas, fields, source,
                      [f"ExoPlaSim {EXOPLASIM_VERSION} runs made by this job (T21, 10 levels), Sobol design"],
                      notes, {"failed": failures, "sweep_wall_s": round(wall, 1)})


def _from_snapshot(ctx: Context) -> Product:
    data, source = ctx.read_offline(SNAPSHOT, "the bundled run list")
    index = json.loads(data)
    fields = {}
    for m in index["runs"]:
        path = SNAPSHOT.parent / f"{m['id']}.npz"
        with np.load(path, allow_pickle=False) as z:
            fields[m["id"]] = {k: z[k] for k in z.files}
    notes = index.get("notes", [])
    return product_of(index["runs"], fields, source, [f"bundled snapshot `{SNAPSHOT.parent.name}` "
                                                      "(see its PROVENANCE.md)"], notes,
                      {"failed": [], "snapshot_settings": index.get("settings")})


# -- the bundled snapshot ------------------------------------------------------------------------
EXAMPLES = {  # the two runs of ../shared/data/climate/exoplasim_sample_runs (settings from its PROVENANCE.md)
    "earth_t21_year1_monthly.nc": {
        "id": "example-earth", "params": {"flux": 1367.0, "star": "sun", "synchronous": False,
                                          "rotation_period": 1.0, "pressure": 1.011, "pco2": None,
                                          "gravity": 9.80665, "radius": 1.0, "aquaplanet": False},
        "settings": {"exoplasim_version": EXOPLASIM_VERSION, "note": "Earth defaults, 1st model year, 45-min step, "
                     "50 m mixed layer, obliquity 23.44, ozone on; 12 monthly means kept as 4 seasonal means"}},
    "trappist1e_like_t21_year1_monthly.nc": {
        "id": "example-trappist1e", "params": {"flux": 900.0, "star": "trap", "synchronous": True,
                                               "rotation_period": 6.1, "pressure": 1.0004, "pco2": 4e-4,
                                               "gravity": 9.12, "radius": 0.92, "aquaplanet": True},
        "settings": {"exoplasim_version": EXOPLASIM_VERSION, "note": "startemp 2709 K, trap.dat, substellar lon "
                     "180, year 6.1 d, 5 m mixed layer, ozone off, 30-min step, physicsfilter gp|exp|sp; 1st model "
                     "year; 12 monthly means kept as 4 seasonal means"}},
}


def bundle(cache: Path, examples: Path | None, out: Path, notes: list[str]) -> int:
    """Write the compact snapshot (float16 fields, runs.json) from finished cache runs and the example runs."""
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for rid, meta in finished_runs(cache).items():
        with np.load(cache / rid / "fields.npz", allow_pickle=False) as z:
            fields = {k: z[k] for k in z.files}
        meta = {**meta, "kind": "sweep", "params": {**meta["params"],
                                                     "star_wien_teff": star_wien_teff(meta["params"]["star"])}}
        _write_npz(out / f"{rid}.npz", {k: v.astype(np.float16) for k, v in fields.items()})
        runs.append(meta)
    for name, info in EXAMPLES.items() if examples else ():
        import netCDF4

        with netCDF4.Dataset(examples / name) as nc:
            raw = {v: np.asarray(nc.variables[v][:], dtype=np.float32) for v in (*VARIABLES_2D, *VARIABLES_3D)
                   if v in nc.variables}
            coords = {c: np.asarray(nc.variables[c][:], dtype=np.float64).tolist() for c in ("lat", "lon", "lev")}
            lsm = np.asarray(nc.variables["lsm"][:], dtype=np.float32)[0]
        raw["ntr"] = raw["rst"] + raw["rlut"]
        seasonal = {k: v.reshape(4, 3, *v.shape[1:]).mean(axis=1) for k, v in raw.items()}
        _write_npz(out / f"{info['id']}.npz", {**{k: v.astype(np.float16) for k, v in seasonal.items()},
                                               "lsm": lsm.astype(np.float16)})
        runs.append({**info, "kind": "example", "coords": coords, "params": {
            **info["params"], "star_wien_teff": star_wien_teff(info["params"]["star"])}, "source_file": name})
    index = {"runs": runs, "notes": notes}
    write_local_atomic(out / "runs.json", (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
    return len(runs)


def main(argv: list[str]) -> int:
    """Worker entry point: run the design point described by the JSON spec file argv[0].

    `bundle CACHE_DIR EXAMPLES_DIR OUT_DIR NOTES_FILE` writes the bundled snapshot instead.
    """
    if argv[0] == "bundle":
        notes = Path(argv[4]).read_text().splitlines() if len(argv) > 4 else []
        print(f"{bundle(Path(argv[1]), Path(argv[2]), Path(argv[3]), notes)} runs bundled")
        return 0
    execute(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
