"""One module per archive; each exposes `Config` (a SourceConfig), `SNAPSHOT` (bundled offline input or None),
`DESCRIPTION` and `build(ctx) -> Product | None` (None: upstream unchanged since LATEST)."""

from __future__ import annotations

import importlib
from types import ModuleType

from datajobs.errors import ConfigError

SOURCES = {
    "nasa-exoplanets": "nasa_exoplanets",
    "exoplanet-catalogue": "exoplanet_catalogue",
    "text": "text",
    "kegg": "kegg",
    "ncbi": "ncbi",
    "mast": "mast",
    "exoplasim-sweep": "exoplasim_sweep",
    "molecules": "molecules",
    "metabolic": "metabolic",
    "spectra-sim": "spectra_sim",
    "spectra-grid": "spectra_grid",
}


def get(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ConfigError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return importlib.import_module(f"datajobs.sources.{SOURCES[name]}")
