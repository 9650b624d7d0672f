"""Domain text for the LLM: a local JSONL corpus (offline) or the arXiv API (astro-ph.EP Atom feed, polite
paging) -> a byte-level BPE tokenizer and packed train/val token shards."""

from __future__ import annotations

import itertools
import json
import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pyarrow as pa
from pydantic import Field

from datajobs import tokens
from datajobs.card import card
from datajobs.config import HttpSettings, SourceConfig
from datajobs.errors import DataError, UpstreamError
from datajobs.job import Context, Product, snapshot_path
from datajobs.logs import track
from datajobs.store import Shard
from datajobs.validate import required, unique, validate

DESCRIPTION = "domain text corpus -> BPE tokenizer + packed token shards"
SNAPSHOT = snapshot_path("text", "corpus.jsonl")
ARXIV_API = "https://export.arxiv.org/api/query"
ATOM = "{http://www.w3.org/2005/Atom}"
OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"


class Config(SourceConfig):
    # arXiv asks for no more than one request every 3 seconds
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(requests_per_second=1 / 3))
    vocab_size: int = Field(4096, ge=260, le=2**20, description="BPE vocabulary size, special token included")
    min_frequency: int = Field(2, ge=1, description="merges need at least this many occurrences")
    val_fraction: float = Field(0.05, gt=0, lt=1, description="share of documents (by id hash) in val")
    tokens_per_shard: int = Field(16 * 2**20, ge=1024, description="split a packed split into npz shards of this size")
    arxiv_url: str = Field(ARXIV_API, description="arXiv API query endpoint")
    arxiv_query: str = Field("cat:astro-ph.EP", description="arXiv search_query")
    arxiv_max_docs: int = Field(2000, ge=1, description="stop after this many abstracts")
    arxiv_page_size: int = Field(100, ge=1, le=2000, description="results per request")


def read_jsonl(data: bytes, what: str) -> pa.Table:
    """`id` and `text` of each JSON line; a line that is not a JSON object is a one-line DataError."""
    ids, texts, licenses = [], [], []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{what} line {n} is not JSON ({exc.msg}); expected one {{id, text}} object per line"
            ) from None
        if not isinstance(doc, dict):
            raise DataError(f"{what} line {n} is not a JSON object; expected one {{id, text}} object per line")
        ids.append(doc.get("id"))
        texts.append(doc.get("text"))
        licenses.append(doc.get("license"))
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "license": pa.array(licenses, pa.string()),
        }
    )


def parse_atom(body: bytes, url: str) -> tuple[int, list[dict[str, str]]]:
    """(totalResults, entries) of one arXiv API page; each entry has id, text (title + abstract), license."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise UpstreamError(f"{url} returned a body that is not Atom XML ({exc})") from None
    total = root.findtext(f"{OPENSEARCH}totalResults")
    entries = []
    for e in root.iter(f"{ATOM}entry"):
        title = " ".join((e.findtext(f"{ATOM}title") or "").split())
        summary = " ".join((e.findtext(f"{ATOM}summary") or "").split())
        entries.append(
            {
                "id": (e.findtext(f"{ATOM}id") or "").strip(),
                "text": f"{title}\n\n{summary}".strip(),
                "license": "arXiv abstract (arXiv metadata license; check each paper's license)",
            }
        )
    return int(total) if total and total.isdigit() else len(entries), entries


def fetch_arxiv(ctx: Context, cfg: Config) -> tuple[pa.Table, dict]:
    """Page through the query, one request per `arxiv_page_size` results, at the configured polite rate."""
    docs: list[dict[str, str]] = []
    total = cfg.arxiv_max_docs
    start = 0
    for _ in track(itertools.count(), "arXiv pages"):  # the loop decides when to stop
        params = {
            "search_query": cfg.arxiv_query,
            "start": start,
            "max_results": cfg.arxiv_page_size,
            "sortBy": "submittedDate",
            "sortOrder": "ascending",
        }
        url = f"{cfg.arxiv_url}?{urlencode(params)}"
        total_results, entries = parse_atom(ctx.http.get(url).content, url)
        docs.extend(entries)
        start += len(entries)
        total = min(cfg.arxiv_max_docs, total_results)
        ctx.log.info("arxiv page", extra={"start": start, "total": total})
        if not entries or start >= total:
            break
    docs = docs[: cfg.arxiv_max_docs]
    table = pa.table({k: pa.array([d[k] for d in docs], pa.string()) for k in ("id", "text", "license")})
    source = {
        "kind": "arxiv",
        "url": cfg.arxiv_url,
        "query": cfg.arxiv_query,
        "max_docs": cfg.arxiv_max_docs,
        "documents": len(docs),
    }
    return table, source


def build(ctx: Context) -> Product | None:
    cfg: Config = ctx.config  # type: ignore[assignment]
    if ctx.mode == "live":
        table, source = fetch_arxiv(ctx, cfg)
        what = f"arXiv query {cfg.arxiv_query!r}"
        source_lines = [f"arXiv API `{cfg.arxiv_url}`, search_query `{cfg.arxiv_query}` (titles + abstracts)"]
        license_lines = [
            "arXiv metadata (titles, abstracts): see https://info.arxiv.org/help/api/tou.html; "
            "thank you to arXiv for use of its open access interoperability."
        ]
    else:
        data, source = ctx.read_offline(SNAPSHOT, "a JSONL corpus with id and text per line")
        what = source["file"]
        table = read_jsonl(data, what)
        source_lines = [f"JSONL corpus `{what}`"]
        if ctx.mode == "snapshot":
            source_lines = [
                "bundled corpus `corpus.jsonl`: documentation of astroquery (BSD-3), pyratbay (GPL-2), "
                "Biopython (Biopython/BSD-3) and the NASA pscomppars column definitions (see PROVENANCE.md)"
            ]
        license_lines = sorted({f"{lic}" for lic in table["license"].to_pylist() if lic}) or ["not stated in the file"]
    checked = validate(
        table, [required("id"), required("text"), unique("id")], max_invalid_share=cfg.max_invalid_share, what=what
    )
    docs = checked.valid
    split = [tokens.split_of(i, cfg.val_fraction) for i in docs["id"].to_pylist()]
    texts = {s: [t for t, sp in zip(docs["text"].to_pylist(), split, strict=True) if sp == s] for s in ("train", "val")}
    if not texts["train"] or not texts["val"]:
        raise DataError(
            f"{what}: {docs.num_rows} valid documents leave an empty split (val_fraction "
            f"{cfg.val_fraction}); add documents or change val_fraction in --config"
        )
    tok = tokens.train_tokenizer(texts["train"], cfg.vocab_size, cfg.min_frequency)
    eos_id = tok.token_to_id(tokens.EOS)
    shards = [Shard("tokenizer.json", tok.to_str().encode())]
    splits = {}
    for name, split_texts in texts.items():
        packed = tokens.pack(tok, split_texts)
        shards += tokens.token_shards(name, packed, cfg.tokens_per_shard)
        splits[name] = {"docs": len(split_texts), "tokens": len(packed), "dtype": str(packed.dtype)}
    shards.append(checked.shard())
    vocab = tok.get_vocab_size()
    shards.append(
        card(
            f"text: {what}",
            source=source_lines,
            rows={
                "documents read": table.num_rows,
                "train documents": splits["train"]["docs"],
                "val documents": splits["val"]["docs"],
                "train tokens": splits["train"]["tokens"],
                "val tokens": splits["val"]["tokens"],
                "quarantined documents": checked.rows_invalid,
            },
            quarantined=checked.counts,
            notes=[
                f"Tokenizer: byte-level BPE (HF tokenizers), vocab {vocab}, `{tokens.EOS}` = id {eos_id}, trained on "
                "the train split only.",
                f"Split: a document is in val when sha256(id) falls in the lowest {cfg.val_fraction} of the hash "
                "range (stable across runs).",
                f"Shards `<split>-NNNNN.npz` hold one 1-D `tokens` array ({splits['train']['dtype']}), documents "
                f"concatenated in input order with the EOS id after each; at most {cfg.tokens_per_shard:,} tokens "
                "per shard.",
            ],
            license=license_lines,
        )
    )
    return Product(
        shards,
        source,
        rows_fetched=table.num_rows,
        rows_quarantined=checked.rows_invalid,
        extra={
            "tokenizer": {"vocab_size": vocab, "eos_id": eos_id},
            "splits": {k: {"docs": v["docs"], "tokens": v["tokens"]} for k, v in splits.items()},
            **checked.summary(),
        },
    )
