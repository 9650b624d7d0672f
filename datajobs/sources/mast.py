"""MAST portal API: JWST/HST spectral observations of target stars (name lookup -> CAOM position search ->
product lists), and download of the chosen products (x1d / HLSP tables) into a spectra shard."""

from __future__ import annotations

import json
import re

import pyarrow as pa
from pydantic import Field

from datajobs import spectra
from datajobs.card import card
from datajobs.config import SourceConfig
from datajobs.errors import DataError, UpstreamError
from datajobs.job import Context, Product
from datajobs.logs import track
from datajobs.store import Shard
from datajobs.validate import in_range, required, validate

DESCRIPTION = "MAST JWST/HST spectral products: observation + product metadata, downloaded spectra"
SNAPSHOT = None
MAST = "https://mast.stsci.edu"
TERMS = (
    'MAST data are public (STScI, NASA). Acknowledge: "Some/all of the data presented in this work were obtained '
    'from the Mikulski Archive for Space Telescopes (MAST) at the Space Telescope Science Institute." Cite the '
    "programs (proposal_id) and any HLSP DOI."
)


class Config(SourceConfig):
    mast_url: str = Field(MAST, description="MAST base URL (portal API at /api/v0/invoke)")
    targets: list[str] = Field(default_factory=lambda: ["WASP-39", "WASP-18", "WASP-107", "TRAPPIST-1"], min_length=1)
    radius_deg: float = Field(0.01, gt=0, le=1, description="cone radius around each resolved target")
    collections: list[str] = Field(default_factory=lambda: ["JWST", "HST"])
    dataproduct_type: str = Field("spectrum", description="CAOM dataproduct_type filter")
    product_regex: str = Field(
        r"(_x1d|_x1dints)\.fits$|^hlsp_.*\.(fits|csv|ecsv)$",
        description="download products whose productFilename matches",
    )
    max_downloads: int = Field(20, ge=0, description="download at most this many products")
    max_product_mb: float = Field(200, gt=0, description="skip larger products")


def invoke(ctx: Context, cfg: Config, service: str, params: dict) -> list[dict]:
    """One portal API call; returns its `data` rows (an error status is an upstream failure)."""
    request = {"service": service, "params": params, "format": "json", "pagesize": 50000, "page": 1}
    body = ctx.http.post(f"{cfg.mast_url}/api/v0/invoke", data={"request": json.dumps(request)}).content
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        raise UpstreamError(f"MAST {service} answered with a body that is not JSON") from None
    if service == "Mast.Name.Lookup":
        return answer.get("resolvedCoordinate") or []
    if answer.get("status") not in ("COMPLETE", None):
        raise UpstreamError(f"MAST {service} status {answer.get('status')}: {answer.get('msg')}")
    return answer.get("data") or []


def _table(rows: list[dict], drop: tuple[str, ...] = ("_selected_",)) -> pa.Table:
    cols = sorted({k for r in rows for k in r} - set(drop))
    return pa.table({c: pa.array([None if r.get(c) is None else str(r[c]) for r in rows], pa.string()) for c in cols})


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode != "live":
        raise DataError("mast has no offline import; run it live")
    observations: list[dict] = []
    for target in cfg.targets:
        resolved = invoke(ctx, cfg, "Mast.Name.Lookup", {"input": target, "format": "json"})
        if not resolved:
            raise DataError(f"MAST cannot resolve target {target!r}; fix `targets` in --config")
        ra, dec = resolved[0]["ra"], resolved[0]["decl"]
        rows = invoke(
            ctx,
            cfg,
            "Mast.Caom.Filtered.Position",
            {
                "columns": "*",
                "position": f"{ra}, {dec}, {cfg.radius_deg}",
                "filters": [
                    {"paramName": "obs_collection", "values": cfg.collections},
                    {"paramName": "dataproduct_type", "values": [cfg.dataproduct_type]},
                ],
            },
        )
        observations += [{**r, "target": target} for r in rows]
    obsids = sorted({str(r["obsid"]) for r in observations})
    products = invoke(ctx, cfg, "Mast.Caom.Products", {"obsid": ",".join(obsids)}) if obsids else []
    pattern = re.compile(cfg.product_regex)
    chosen = [
        p
        for p in products
        if pattern.search(p.get("productFilename") or "") and (p.get("size") or 0) <= cfg.max_product_mb * 2**20
    ][: cfg.max_downloads]
    parts = []
    for p in track(chosen, "MAST downloads"):
        body = ctx.http.get(f"{cfg.mast_url}/api/v0.1/Download/file", params={"uri": p["dataURI"]}).content
        parts.append(spectra.parse(p["productFilename"], body))
    spec = pa.concat_tables(parts) if parts else spectra.SCHEMA.empty_table()
    checks = [required("wavelength"), required("value"), in_range("wavelength", 0, 1e5, "", lo_open=True)]
    checked = validate(spec, checks, max_invalid_share=cfg.max_invalid_share, what="MAST spectra", allow_empty=True)
    obs_table, prod_table = _table(observations), _table(products)
    source = {
        "kind": "mast",
        "url": cfg.mast_url,
        "targets": cfg.targets,
        "collections": cfg.collections,
        "dataproduct_type": cfg.dataproduct_type,
        "downloaded": [p["dataURI"] for p in chosen],
    }
    valid = checked.valid
    shards = [
        Shard.parquet("observations.parquet", obs_table),
        Shard.parquet("products.parquet", prod_table),
        Shard.parquet("spectra.parquet", valid),
        card(
            "mast: JWST/HST spectral products",
            source=[
                f"MAST portal API `{cfg.mast_url}/api/v0/invoke`: Mast.Name.Lookup, Mast.Caom.Filtered.Position "
                f"({', '.join(cfg.collections)}, {cfg.dataproduct_type}, r={cfg.radius_deg} deg), "
                "Mast.Caom.Products; downloads via /api/v0.1/Download/file",
                f"targets: {', '.join(cfg.targets)}",
            ],
            rows={
                "observations": obs_table.num_rows,
                "products listed": prod_table.num_rows,
                "products downloaded": len(chosen),
                "spectrum points": valid.num_rows,
            },
            quarantined=checked.counts,
            notes=[
                "Metadata values are kept as strings, as MAST returns them; spectra.parquet holds one row per "
                "wavelength point (`quantity` names the column the value came from, e.g. FLUX or dppm)."
            ],
            license=[TERMS],
        ),
        checked.shard(),
    ]
    return Product(
        shards, source, rows_fetched=spec.num_rows, rows_quarantined=checked.rows_invalid, extra=checked.summary()
    )
