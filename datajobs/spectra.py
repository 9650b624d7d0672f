"""Spectral products (x1d FITS tables, HLSP CSV/ECSV tables) -> long-format spectrum rows."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from datajobs.errors import DataError, require

WAVELENGTH = ("WAVELENGTH", "wavelength", "wave", "wl")
VALUE = ("FLUX", "flux", "dppm", "depth", "transit_depth")
ERROR = ("FLUX_ERROR", "ERROR", "flux_error", "dppm_err", "depth_err", "error")
SCHEMA = pa.schema(
    [
        ("product", pa.string()),
        ("wavelength", pa.float64()),
        ("value", pa.float64()),
        ("error", pa.float64()),
        ("quantity", pa.string()),
        ("wavelength_unit", pa.string()),
        ("value_unit", pa.string()),
    ]
)


def _pick(names: list[str], candidates: tuple[str, ...], what: str, product: str) -> str:
    for c in candidates:
        if c in names:
            return c
    raise DataError(f"{product}: no {what} column (looked for {', '.join(candidates)}; has {', '.join(names)})")


def _fits_columns(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The first binary table with a WAVELENGTH column (x1d: EXTRACT1D / SCI), flattened, with units."""
    fits = require("astropy.io.fits", "science")
    with fits.open(io.BytesIO(data)) as hdul:
        for hdu in hdul:
            if isinstance(hdu, fits.BinTableHDU) and "WAVELENGTH" in [c.upper() for c in hdu.columns.names]:
                cols = {
                    c.name: np.asarray(hdu.data[c.name], dtype=float).ravel()
                    for c in hdu.columns
                    if np.issubdtype(np.asarray(hdu.data[c.name]).dtype, np.number)
                }
                return cols, {c.name: c.unit or "" for c in hdu.columns}
    raise DataError("no binary table with a WAVELENGTH column")


def parse(product: str, data: bytes) -> pa.Table:
    """One spectrum as rows (wavelength, value, error); FITS by extension, else a CSV table."""
    if product.lower().endswith((".fits", ".fits.gz")):
        try:
            cols, units = _fits_columns(data)
        except OSError as exc:
            raise DataError(f"{product} is not a readable FITS file ({exc})") from None
    else:
        try:
            table = pacsv.read_csv(io.BytesIO(data), parse_options=pacsv.ParseOptions(delimiter=","))
        except pa.ArrowInvalid as exc:
            raise DataError(f"{product} is not a CSV table ({str(exc).splitlines()[0]})") from None
        cols = {
            n: table[n].to_numpy(zero_copy_only=False).astype(float)
            for n in table.column_names
            if pa.types.is_floating(table[n].type) or pa.types.is_integer(table[n].type)
        }
        units = {}
    names = list(cols)
    w, v, e = (
        _pick(names, c, what, product) for c, what in ((WAVELENGTH, "wavelength"), (VALUE, "value"), (ERROR, "error"))
    )
    n = len(cols[w])
    return pa.table(
        {
            "product": pa.array([product] * n),
            "wavelength": cols[w],
            "value": cols[v],
            "error": cols[e],
            "quantity": pa.array([v] * n),
            "wavelength_unit": pa.array([units.get(w, "")] * n),
            "value_unit": pa.array([units.get(v, "")] * n),
        },
        schema=SCHEMA,
    )
