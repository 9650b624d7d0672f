"""NASA Exoplanet Archive: `pscomppars` (or `ps` with default_flag=1) through TAP sync as CSV -> planets table."""

from __future__ import annotations

from urllib.parse import urlencode

from pydantic import Field

from datajobs import planets
from datajobs.config import SourceConfig
from datajobs.job import Context, Product, snapshot_path

DESCRIPTION = "NASA Exoplanet Archive planets (pscomppars / ps) via TAP"
TAP_SYNC = "https://exoplanetarchive.ipac.caltech.edu/TAP/sync"
SNAPSHOT = snapshot_path("nasa_pscomppars_2026-03-31", "pscomppars_subset_2026-03-31.csv")
ACK = (
    'NASA Exoplanet Archive data are public. Acknowledge: "This research has made use of the NASA Exoplanet '
    "Archive, which is operated by the California Institute of Technology, under contract with the National "
    'Aeronautics and Space Administration under the Exoplanet Exploration Program."'
)
TAP_COLUMNS = [n for n in planets.SCHEMA.names if n != "catalogue_list"]


class Config(SourceConfig):
    tap_url: str = Field(TAP_SYNC, description="TAP sync endpoint")
    table: str = Field("pscomppars", pattern="^(pscomppars|ps)$", description="pscomppars, or ps (default_flag=1 rows)")
    where: str | None = Field(None, description="extra ADQL condition, e.g. `disc_year > 2015`")


def adql(cfg: Config) -> str:
    conds = (["default_flag = 1"] if cfg.table == "ps" else []) + ([f"({cfg.where})"] if cfg.where else [])
    where = f" where {' and '.join(conds)}" if conds else ""
    return f"select {','.join(TAP_COLUMNS)} from {cfg.table}{where} order by pl_name"


def query_url(cfg: Config) -> str:
    return f"{cfg.tap_url}?{urlencode({'query': adql(cfg), 'format': 'csv'})}"


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    notes = [
        "Rows failing a check are quarantined whole (see Quarantined); nothing is imputed or invented.",
        "Train mass models only on rows with pl_bmassprov == 'Mass' and tran_flag == 1: the archive fills other "
        "masses from M sin i or a mass-radius relation, and radii of non-transiting planets from a relation.",
    ]
    if ctx.mode == "live":
        url = query_url(cfg)
        fetched = ctx.http.get(url, validators=ctx.previous_validators(url))
        if fetched.not_modified:
            return None
        data, what = fetched.content, f"TAP response {cfg.tap_url} ({cfg.table})"
        source = {
            "kind": "tap",
            "url": url,
            "query": adql(cfg),
            "table": cfg.table,
            "sha256": fetched.sha256,
            "validators": fetched.validators(),
        }
        source_lines = [f"NASA Exoplanet Archive TAP `{cfg.tap_url}`", f"ADQL: `{adql(cfg)}` (format=csv)"]
    else:
        data, source = ctx.read_offline(SNAPSHOT, "a saved TAP CSV result")
        what = source["file"]
        source_lines = [f"file `{what}` (a saved TAP CSV result)"]
        if ctx.mode == "snapshot":
            source_lines = [
                "bundled snapshot `pscomppars_subset_2026-03-31.csv`: NASA Exoplanet Archive `pscomppars` downloaded "
                "through TAP on 2026-03-31 (via GitHub urkomen/EDA-Exoplanets@7a46e8a; see its PROVENANCE.md)",
                "upstream cleaning: rows lacking pl_rade, pl_bmasse or sy_dist dropped (6,153 -> 6,053); some "
                "pl_orbsmax filled with Kepler's third law",
            ]
            notes.append(
                "The snapshot has no pl_bmassprov, tran_flag or uncertainty columns, so they are null: the measured "
                "masses cannot be told from M sin i or mass-radius values here. Run the live job "
                "(`astrobio-data run nasa-exoplanets`) for them."
            )
    types = {n: t for n, t, _ in planets.COLUMNS}
    table = planets.conform(planets.read_csv(data, what, types), what)
    return planets.product(
        table,
        title=f"nasa-exoplanets: NASA Exoplanet Archive `{cfg.table}`",
        what=what,
        max_invalid_share=cfg.max_invalid_share,
        source=source,
        source_lines=source_lines,
        notes=notes,
        license=[ACK],
    )
