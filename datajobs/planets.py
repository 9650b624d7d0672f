"""The normalized planets table both exoplanet sources publish (NASA column names and units) and its checks."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from datajobs.card import card
from datajobs.errors import DataError
from datajobs.job import Product
from datajobs.store import Shard
from datajobs.validate import Check, in_range, required, unique, validate

SHARD = "planets.parquet"

# (name, arrow type, meaning and unit) in published order.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("pl_name", pa.string(), "planet name"),
    ("hostname", pa.string(), "host star name"),
    ("pl_rade", pa.float64(), "planet radius [Earth radii]"),
    ("pl_bmasse", pa.float64(), "planet mass or M sin i [Earth masses]"),
    (
        "pl_bmassprov",
        pa.string(),
        "mass provenance (Mass, Msini, Msin(i)/sin(i), M-R relationship, ...); null if unknown",
    ),
    ("pl_orbper", pa.float64(), "orbital period [days]"),
    ("pl_orbsmax", pa.float64(), "semi-major axis [au]"),
    ("pl_insol", pa.float64(), "insolation flux [Earth flux]"),
    ("pl_eqt", pa.float64(), "equilibrium temperature [K]"),
    ("st_teff", pa.float64(), "stellar effective temperature [K]"),
    ("st_rad", pa.float64(), "stellar radius [solar radii]"),
    ("st_mass", pa.float64(), "stellar mass [solar masses]"),
    ("st_met", pa.float64(), "stellar metallicity [dex]"),
    ("sy_dist", pa.float64(), "distance [pc]"),
    ("discoverymethod", pa.string(), "discovery method (NASA spelling)"),
    ("disc_year", pa.int64(), "discovery year"),
    ("catalogue_list", pa.string(), "Open Exoplanet Catalogue lists the planet is on; null for NASA"),
    ("tran_flag", pa.int64(), "1 if the planet transits (its radius is a transit measurement); null if unknown"),
    ("pl_radeerr1", pa.float64(), "upper uncertainty of pl_rade [Earth radii]; null if unknown"),
    ("pl_radeerr2", pa.float64(), "lower uncertainty of pl_rade (negative) [Earth radii]; null if unknown"),
    ("pl_bmasseerr1", pa.float64(), "upper uncertainty of pl_bmasse [Earth masses]; null if unknown"),
    ("pl_bmasseerr2", pa.float64(), "lower uncertainty of pl_bmasse (negative) [Earth masses]; null if unknown"),
]
SCHEMA = pa.schema([(n, t) for n, t, _ in COLUMNS])
# May be absent upstream (OEC, the bundled NASA snapshot); published as null.
OPTIONAL = {"pl_bmassprov", "catalogue_list", "tran_flag", "pl_radeerr1", "pl_radeerr2", "pl_bmasseerr1",
            "pl_bmasseerr2"}

M_JUP_IN_EARTH = 1.2668653e17 / 3.986004e14  # IAU 2015 nominal GM_J / GM_E = 317.83
R_JUP_IN_EARTH = 7.1492e7 / 6.3781e6  # IAU 2015 nominal equatorial radii = 11.209


def checks() -> list[Check]:
    """Presence, uniqueness and physical ranges: wide enough for every real planet and host (Y dwarfs near
    300 K, neutron-star hosts of 1e-5 solar radii, wide-orbit imaged companions), narrow enough to quarantine
    impossible values (a 58 K star, a metallicity of +7.8 dex, a 'planet' larger than 30 Earth radii, which is
    beyond any measured planet and in the catalogues only as unit mix-ups or disk-dominated imaging fits)."""
    return [
        required("pl_name"),
        required("hostname"),
        unique("pl_name"),
        in_range("pl_rade", 0.1, 30, "Earth radii"),
        in_range("pl_bmasse", 0, 9540, "Earth masses (NASA includes up to 30 Jupiter masses)", lo_open=True),
        in_range("pl_orbper", 0.05, 1e10, "days"),
        in_range("pl_orbsmax", 0, 1e5, "au", lo_open=True),
        in_range("pl_insol", 0, 1e5, "Earth flux"),
        in_range("pl_eqt", 0, 1e4, "K", lo_open=True),
        in_range("st_teff", 250, 2e5, "K (coolest known brown dwarfs ~250 K)"),
        in_range("st_rad", 0, 2000, "solar radii", lo_open=True),
        in_range("st_mass", 0, 300, "solar masses", lo_open=True),
        in_range("st_met", -5, 1.5, "dex"),
        in_range("sy_dist", 0, 1e6, "pc", lo_open=True),
        in_range("disc_year", 1988, dt.date.today().year + 1, ""),
        in_range("tran_flag", 0, 1, ""),
    ]


def read_csv(data: bytes, what: str, types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Parse CSV bytes with explicit column types; a malformed body is a one-line DataError."""
    try:
        return pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(column_types=types or {}, strings_can_be_null=True),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{what} is not a valid CSV table: {str(exc).splitlines()[0]}") from None


def conform(table: pa.Table, what: str) -> pa.Table:
    """Select and order the normalized columns; optional ones missing upstream become null."""
    missing = [n for n in SCHEMA.names if n not in table.column_names and n not in OPTIONAL]
    if missing:
        raise DataError(f"{what} lacks column(s) {', '.join(missing)}; is it a planets table with NASA column names?")
    cols = []
    for f in SCHEMA:
        if f.name in table.column_names:
            try:
                cols.append(table[f.name].cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"{what}: column {f.name} is not {f.type}: {str(exc).splitlines()[0]}") from None
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def product(
    table: pa.Table,
    *,
    title: str,
    what: str,
    max_invalid_share: float,
    source: dict,
    source_lines: Sequence[str],
    notes: Sequence[str],
    license: Sequence[str],
) -> Product:
    """Validate a conformed table and package planets.parquet, quarantine.parquet and CARD.md."""
    checked = validate(table, checks(), max_invalid_share=max_invalid_share, what=what)
    valid = checked.valid
    with_mass_radius = valid.filter(pc.and_(pc.is_valid(valid["pl_rade"]), pc.is_valid(valid["pl_bmasse"]))).num_rows
    shards = [
        Shard.parquet(SHARD, valid),
        checked.shard(),
        card(
            title,
            source=source_lines,
            rows={
                "fetched": table.num_rows,
                "published": valid.num_rows,
                "published with both radius and mass": with_mass_radius,
                "quarantined": checked.rows_invalid,
            },
            quarantined=checked.counts,
            columns=[(n, str(t), m) for n, t, m in COLUMNS],
            notes=notes,
            license=license,
        ),
    ]
    return Product(
        shards,
        source,
        rows_fetched=table.num_rows,
        rows_quarantined=checked.rows_invalid,
        extra=checked.summary(),
    )
