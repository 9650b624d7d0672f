"""Open Exoplanet Catalogue (oec_tables flat CSV) -> the planets table in NASA names and units."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from datajobs import planets
from datajobs.config import SourceConfig
from datajobs.errors import DataError
from datajobs.job import Context, Product, snapshot_path

DESCRIPTION = "Open Exoplanet Catalogue planets (literature masses), NASA names and units"
CSV_URL = (
    "https://raw.githubusercontent.com/OpenExoplanetCatalogue/oec_tables/master/comma_separated/"
    "open_exoplanet_catalogue.txt"
)
SNAPSHOT = snapshot_path("open_exoplanet_catalogue", "open_exoplanet_catalogue.csv")
PROVENANCE_LABEL = "literature (OEC)"
T_SUN = 5772.0  # K, IAU 2015 nominal solar effective temperature

# OEC discoverymethod -> NASA spelling; "timing" is resolved per row (see discovery_method).
METHODS = {
    "transit": "Transit",
    "RV": "Radial Velocity",
    "imaging": "Imaging",
    "microlensing": "Microlensing",
    "astrometry": "Astrometry",
    "disk kinematics": "Disk Kinematics",
}
OEC_TYPES = {
    "name": pa.string(),
    "binaryflag": pa.int64(),
    "mass": pa.float64(),
    "radius": pa.float64(),
    "period": pa.float64(),
    "semimajoraxis": pa.float64(),
    "temperature": pa.float64(),
    "discoverymethod": pa.string(),
    "discoveryyear": pa.int64(),
    "system_distance": pa.float64(),
    "hoststar_mass": pa.float64(),
    "hoststar_radius": pa.float64(),
    "hoststar_metallicity": pa.float64(),
    "hoststar_temperature": pa.float64(),
    "list": pa.string(),
}
# "Kepler-82 f" -> "Kepler-82"; "HD 131399 Ab" -> "HD 131399 A"; "DH Tau B" -> "DH Tau"; "KOI-4427.01" -> "KOI-4427"
HOST_PATTERNS = [re.compile(r"^(.+?)\s+([A-Z]?)[b-z]$"), re.compile(r"^(.+?)\s+[A-D]$"), re.compile(r"^(.+)\.\d{2}$")]


class Config(SourceConfig):
    csv_url: str = Field(CSV_URL, description="the oec_tables comma_separated file")


def hostname(name: str | None) -> str | None:
    """The host star from a planet name; None for free-floating objects and Solar System planets."""
    for pat in HOST_PATTERNS:
        m = pat.match(name or "")
        if m:
            return " ".join(g for g in m.groups() if g)
    return None


def discovery_method(method: str | None, name: str | None, binaryflag: int | None) -> str | None:
    """NASA spelling; OEC's "timing" is Pulsar Timing for PSR hosts, Eclipse Timing Variations for
    circumbinary (P-type) planets, and left null otherwise (OEC does not say which timing method)."""
    if method == "timing":
        if (name or "").startswith("PSR"):
            return "Pulsar Timing"
        return "Eclipse Timing Variations" if binaryflag == 1 else None
    return METHODS.get(method or "")


def normalize(oec: pa.Table, what: str) -> pa.Table:
    """OEC columns (Jupiter units) -> planets columns (Earth units, NASA names)."""
    missing = [c for c in OEC_TYPES if c not in oec.column_names]
    if missing:
        raise DataError(f"{what} lacks OEC column(s) {', '.join(missing)}; is it oec_tables' comma_separated file?")
    names = oec["name"].to_pylist()
    a = oec["semimajoraxis"].to_numpy(zero_copy_only=False).astype(float)
    rs = oec["hoststar_radius"].to_numpy(zero_copy_only=False).astype(float)
    teff = oec["hoststar_temperature"].to_numpy(zero_copy_only=False).astype(float)
    insol = rs**2 * (teff / T_SUN) ** 4 / a**2  # NaN where any input is missing
    mass = pc.multiply(oec["mass"], planets.M_JUP_IN_EARTH)
    cols = {
        "pl_name": oec["name"],
        "hostname": pa.array([hostname(n) for n in names], pa.string()),
        "pl_rade": pc.multiply(oec["radius"], planets.R_JUP_IN_EARTH),
        "pl_bmasse": mass,
        "pl_bmassprov": pc.if_else(pc.is_valid(mass), PROVENANCE_LABEL, pa.scalar(None, pa.string())),
        "pl_orbper": oec["period"],
        "pl_orbsmax": oec["semimajoraxis"],
        "pl_insol": pa.array(insol, pa.float64(), mask=np.isnan(insol)),
        "pl_eqt": oec["temperature"],
        "st_teff": oec["hoststar_temperature"],
        "st_rad": oec["hoststar_radius"],
        "st_mass": oec["hoststar_mass"],
        "st_met": oec["hoststar_metallicity"],
        "sy_dist": oec["system_distance"],
        "discoverymethod": pa.array(
            [
                discovery_method(m, n, b)
                for m, n, b in zip(
                    oec["discoverymethod"].to_pylist(), names, oec["binaryflag"].to_pylist(), strict=True
                )
            ],
            pa.string(),
        ),
        "disc_year": oec["discoveryyear"],
        "catalogue_list": oec["list"],
    }
    return planets.conform(pa.table(cols), what)


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode == "live":
        fetched = ctx.http.get(cfg.csv_url, validators=ctx.previous_validators(cfg.csv_url))
        if fetched.not_modified:
            return None
        data, what = fetched.content, cfg.csv_url
        source = {"kind": "http", "url": cfg.csv_url, "sha256": fetched.sha256, "validators": fetched.validators()}
        source_lines = [f"Open Exoplanet Catalogue flat table `{cfg.csv_url}`"]
    else:
        data, source = ctx.read_offline(SNAPSHOT, "an oec_tables comma_separated CSV")
        what = source["file"]
        source_lines = [f"file `{what}`"]
        if ctx.mode == "snapshot":
            source_lines = [
                "bundled snapshot: GitHub OpenExoplanetCatalogue/oec_tables@bf1efad (2023-10-15), "
                "`comma_separated/open_exoplanet_catalogue.txt` (see its PROVENANCE.md and FIELDS.md)"
            ]
    table = normalize(planets.read_csv(data, what, OEC_TYPES), what)
    return planets.product(
        table,
        title="exoplanet-catalogue: Open Exoplanet Catalogue",
        what=what,
        max_invalid_share=cfg.max_invalid_share,
        source=source,
        source_lines=source_lines,
        notes=[
            f"Units converted from Jupiter to Earth: mass x {planets.M_JUP_IN_EARTH:.4f}, radius x "
            f"{planets.R_JUP_IN_EARTH:.4f} (IAU 2015 nominal values).",
            f"pl_bmassprov is '{PROVENANCE_LABEL}' where a mass is given: OEC compiles literature masses "
            "(including M sin i for RV planets; OEC does not flag which).",
            "pl_insol is computed, not catalogued: st_rad^2 (st_teff/5772 K)^4 / pl_orbsmax^2 "
            "(null when any is missing).",
            "pl_eqt is OEC's `temperature` (surface or equilibrium temperature).",
            "hostname is derived from the planet name (letter or .NN suffix removed); objects without a host "
            "(free-floating planets, Solar System planets) are quarantined.",
            "discoverymethod: OEC spellings mapped to NASA's; OEC 'timing' is 'Pulsar Timing' for PSR hosts, "
            "'Eclipse Timing Variations' for circumbinary planets, else null.",
        ],
        license=[
            "Open Exoplanet Catalogue, MIT-style database license, Copyright (C) 2020 Hanno Rein; publications "
            "that use it must cite the Database (Rein 2012, arXiv:1211.7121)."
        ],
    )
