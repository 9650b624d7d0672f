"""NCBI E-utilities: esearch (history server) -> efetch in batches -> GenBank records parsed with Biopython."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from datajobs.card import card
from datajobs.config import HttpSettings, SourceConfig
from datajobs.errors import DataError, UpstreamError, require
from datajobs.job import Context, Product
from datajobs.logs import track
from datajobs.store import Shard
from datajobs.validate import in_range, required, unique, validate

DESCRIPTION = "NCBI GenBank records for a query (esearch -> efetch, history server), parsed with Biopython"
SNAPSHOT = None
EUTILS = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils"
API_KEY_ENV = "NCBI_API_KEY"
EMAIL_ENV = "NCBI_EMAIL"
TERMS = (
    "NCBI/INSDC sequence records are public; see https://www.ncbi.nlm.nih.gov/home/about/policies/ and the "
    "E-utilities usage guidelines (at most 3 requests/s without an API key, 10 with one)."
)
RECORD_SCHEMA = pa.schema(
    [
        ("accession", pa.string()),
        ("description", pa.string()),
        ("organism", pa.string()),
        ("taxonomy", pa.string()),
        ("taxon_id", pa.int64()),
        ("molecule_type", pa.string()),
        ("topology", pa.string()),
        ("length", pa.int64()),
        ("gc_fraction", pa.float64()),
        ("n_features", pa.int32()),
        ("n_cds", pa.int32()),
        ("sequence", pa.large_string()),
    ]
)
FEATURE_SCHEMA = pa.schema(
    [
        ("accession", pa.string()),
        ("type", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("strand", pa.int8()),
        ("locus_tag", pa.string()),
        ("gene", pa.string()),
        ("product", pa.string()),
    ]
)


def _default_http() -> HttpSettings:
    """NCBI's limit: 10 requests/s with an API key (from $NCBI_API_KEY only), 3 without."""
    return HttpSettings(requests_per_second=10.0 if os.environ.get(API_KEY_ENV) else 3.0)


class Config(SourceConfig):
    http: HttpSettings = Field(default_factory=_default_http)
    eutils_url: str = Field(EUTILS, description="E-utilities base URL")
    db: str = Field("nucleotide", description="Entrez database")
    term: str = Field(
        '(extremophile[All Fields] OR "Deinococcus radiodurans"[Organism]) AND complete genome[Title]',
        description="esearch query",
    )
    max_records: int = Field(200, ge=1, description="fetch at most this many records")
    batch_size: int = Field(100, ge=1, le=500, description="records per efetch request")


def _params(**kw: object) -> dict[str, object]:
    out = {"tool": "astrobio-train", **kw}
    if os.environ.get(EMAIL_ENV):
        out["email"] = os.environ[EMAIL_ENV]
    if os.environ.get(API_KEY_ENV):
        out["api_key"] = os.environ[API_KEY_ENV]
    return out


def search(ctx: Context, cfg: Config) -> tuple[int, str, str]:
    """(count, WebEnv, query_key) of the query, kept on NCBI's history server."""
    entrez = require("Bio.Entrez", "science")
    body = ctx.http.get(
        f"{cfg.eutils_url}/esearch.fcgi", params=_params(db=cfg.db, term=cfg.term, usehistory="y", retmax=0)
    ).content
    try:
        result = entrez.read(io.BytesIO(body))
        return int(result["Count"]), result["WebEnv"], result["QueryKey"]
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UpstreamError(f"esearch answer is not a usable eSearchResult ({str(exc).splitlines()[0]})") from None


def fetch_batches(ctx: Context, cfg: Config, total: int, webenv: str, query_key: str):
    """GenBank records, batch by batch; a batch with fewer records than asked for is an upstream failure."""
    seqio = require("Bio.SeqIO", "science")
    for start in track(range(0, total, cfg.batch_size), "efetch batches"):
        want = min(cfg.batch_size, total - start)
        body = ctx.http.get(
            f"{cfg.eutils_url}/efetch.fcgi",
            params=_params(
                db=cfg.db,
                WebEnv=webenv,
                query_key=query_key,
                retstart=start,
                retmax=want,
                rettype="gb",
                retmode="text",
            ),
        ).content
        try:
            records = list(seqio.parse(io.StringIO(body.decode("utf-8", "replace")), "genbank"))
        except ValueError as exc:
            raise UpstreamError(f"efetch batch at {start} is not GenBank text ({str(exc).splitlines()[0]})") from None
        if len(records) != want:
            raise UpstreamError(f"efetch batch at {start} returned {len(records)} of {want} records")
        ctx.log.info("efetch batch", extra={"start": start, "records": len(records)})
        yield from records


def tables(records) -> tuple[pa.Table, pa.Table]:
    gc = require("Bio.SeqUtils", "science").gc_fraction
    rows, feats = [], []
    for rec in records:
        try:
            seq = str(rec.seq)
        except Exception:  # Bio.Seq.UndefinedSequenceError: a record without sequence (e.g. CONTIG only)
            seq = None
        taxon = next(
            (
                x.split(":", 1)[1]
                for f in rec.features
                if f.type == "source"
                for x in f.qualifiers.get("db_xref", [])
                if x.startswith("taxon:")
            ),
            None,
        )
        rows.append(
            {
                "accession": rec.id,
                "description": rec.description,
                "organism": rec.annotations.get("organism"),
                "taxonomy": "; ".join(rec.annotations.get("taxonomy", [])) or None,
                "taxon_id": int(taxon) if taxon and taxon.isdigit() else None,
                "molecule_type": rec.annotations.get("molecule_type"),
                "topology": rec.annotations.get("topology"),
                "length": len(seq) if seq else None,
                "gc_fraction": float(gc(seq)) if seq else None,
                "n_features": len(rec.features),
                "n_cds": sum(f.type == "CDS" for f in rec.features),
                "sequence": seq,
            }
        )
        for f in rec.features:
            q = f.qualifiers
            feats.append(
                {
                    "accession": rec.id,
                    "type": f.type,
                    "start": int(f.location.start),
                    "end": int(f.location.end),
                    "strand": f.location.strand,
                    "locus_tag": (q.get("locus_tag") or [None])[0],
                    "gene": (q.get("gene") or [None])[0],
                    "product": (q.get("product") or [None])[0],
                }
            )
    return pa.Table.from_pylist(rows, RECORD_SCHEMA), pa.Table.from_pylist(feats, FEATURE_SCHEMA)


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode != "live":
        raise DataError("ncbi has no offline import; run it live (set NCBI_API_KEY for 10 requests/s)")
    count, webenv, query_key = search(ctx, cfg)
    if count == 0:
        raise DataError(f"esearch found no {cfg.db} records for {cfg.term!r}; change `term` in --config")
    total = min(count, cfg.max_records)
    records, features = tables(fetch_batches(ctx, cfg, total, webenv, query_key))
    checked = validate(
        records,
        [required("accession"), unique("accession"), required("sequence"), in_range("length", 1, 1e10, "bp")],
        max_invalid_share=cfg.max_invalid_share,
        what=f"NCBI {cfg.db} records",
    )
    valid = checked.valid
    features = features.filter(pc.is_in(features["accession"], value_set=valid["accession"].combine_chunks()))
    source = {
        "kind": "entrez",
        "url": cfg.eutils_url,
        "db": cfg.db,
        "term": cfg.term,
        "count": count,
        "fetched": total,
    }
    shards = [
        Shard.parquet("records.parquet", valid),
        Shard.parquet("features.parquet", features),
        checked.shard(),
        card(
            f"ncbi: {cfg.db} records for {cfg.term}",
            source=[
                f"NCBI E-utilities `{cfg.eutils_url}`: esearch (usehistory=y) then efetch rettype=gb in "
                f"batches of {cfg.batch_size}",
                f"query `{cfg.term}` on `{cfg.db}`: {count:,} matches, first {total:,} fetched",
            ],
            rows={
                "records fetched": records.num_rows,
                "records published": valid.num_rows,
                "features": features.num_rows,
            },
            quarantined=checked.counts,
            notes=[
                "records.parquet holds one GenBank record per row with its full sequence; features.parquet its "
                "annotated features (0-based start, end exclusive, strand +1/-1)."
            ],
            license=[TERMS],
        ),
    ]
    return Product(
        shards, source, rows_fetched=records.num_rows, rows_quarantined=checked.rows_invalid, extra=checked.summary()
    )
