"""The replay server's route table: URL path -> recorded response (files under tests/fixtures/). Each route
checks the query parameters the data job sends and answers 400 to any other query, as the archive would
(or would answer with something else): a fixture is served only for the request it stands for."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from tests.datajobs.helpers import FIXTURES
from tests.datajobs.replay import Recorded, Route

KEGG_COMPOUNDS = ["C00023", "C00017", "C00099", "C00294", "C00298", "C00348", "C00349", "C01386"]
KEGG_PATHWAYS = ["ko00010", "ko00253"]


NCBI_TERM = '(extremophile[All Fields] OR "Deinococcus radiodurans"[Organism]) AND complete genome[Title]'
NCBI_WEBENV, NCBI_QUERY_KEY = "MCID_6927d6e7fee3e90f880ec190", "1"  # from esearch2.xml
L98_59 = ("124.53", "-68.31")  # resolver.json: where the CAOM position search must be centred
CAOM_OBSIDS = sorted({str(r["obsid"]) for r in json.loads((FIXTURES / "mast" / "caom.json").read_text())["data"]})


def refused(why: str) -> Recorded:
    return Recorded(f"bad request: {why}".encode(), "text/plain", status=400)


def _mismatch(query: dict[str, list[str]], **expected: str) -> str | None:
    """The first parameter whose value is not the expected one (None: all match)."""
    for key, value in expected.items():
        if query.get(key) != [value]:
            return f"{key}={query.get(key)} (expected {value!r})"
    return None


def checked(route: Recorded | Callable[[dict[str, list[str]]], Recorded], **expected: str):
    """ROUTE served only when the query holds EXPECTED parameters."""

    def serve(query: dict[str, list[str]]) -> Recorded:
        wrong = _mismatch(query, **expected)
        if wrong:
            return refused(wrong)
        return route(query) if callable(route) else route

    return serve


def _tap(query: dict[str, list[str]]) -> Recorded:
    adql = (query.get("query") or [""])[0].lower()
    if query.get("format") != ["csv"] or not re.search(r"\bfrom (pscomppars|ps)\b", adql):
        return refused(f"TAP query {query}")
    return Recorded.file(FIXTURES / "nasa_tap" / "pscomppars_sync.csv", "text/csv")


def _arxiv_page(query: dict[str, list[str]]) -> Recorded:
    if "search_query" not in query or "max_results" not in query:
        return refused(f"arXiv query {query}")
    page = int(query.get("start", ["0"])[0]) // 2
    path = FIXTURES / "arxiv" / f"page-{page}.xml"
    return Recorded.file(path, "application/atom+xml") if path.exists() else Recorded(b"", "text/plain")


def _efetch(query: dict[str, list[str]]) -> Recorded:
    wrong = _mismatch(
        query, db="nucleotide", WebEnv=NCBI_WEBENV, query_key=NCBI_QUERY_KEY, rettype="gb", retmode="text"
    )
    if wrong or query.get("retstart") not in (["0"], ["3"]) or query.get("retmax") != ["3"]:
        return refused(wrong or f"retstart={query.get('retstart')} retmax={query.get('retmax')}")
    return Recorded.file(FIXTURES / "ncbi" / f"efetch-{query['retstart'][0]}.gb", "text/plain")


MAST_ANSWERS = {
    "Mast.Name.Lookup": "resolver.json",
    "Mast.Caom.Filtered.Position": "caom.json",
    "Mast.Caom.Products": "products_plus_fixture_row.json",
}


def _mast_invoke(query: dict[str, list[str]]) -> Recorded:
    request = json.loads(query["request"][0])
    service, params = request["service"], request["params"]
    if service == "Mast.Name.Lookup" and params.get("input") != "L 98-59":
        return refused(f"name lookup for {params.get('input')!r}")
    if service == "Mast.Caom.Filtered.Position":
        ra, dec, _ = (part.strip() for part in params["position"].split(","))
        if not (ra.startswith(L98_59[0]) and dec.startswith(L98_59[1])):
            return refused(f"position {params['position']} is not the resolved L 98-59")
    if service == "Mast.Caom.Products" and params.get("obsid") != ",".join(CAOM_OBSIDS):
        return refused(f"products for obsid {params.get('obsid')} (not the CAOM rows)")
    return Recorded.file(FIXTURES / "mast" / MAST_ANSWERS[service], "application/json")


def _mast_download(query: dict[str, list[str]]) -> Recorded:
    if query.get("uri") != ["mast:FIXTURE/AT-WASP_39b_NIRISS_transmission_spectrum.csv"]:
        return refused(f"download of {query.get('uri')}")
    return Recorded.file(FIXTURES / "mast" / "AT-WASP_39b_NIRISS_transmission_spectrum.csv", "text/csv")


def routes() -> dict[str, Route]:
    return {
        "/TAP/sync": _tap,
        "/oec.csv": Recorded.file(FIXTURES / "oec" / "open_exoplanet_catalogue_head300.csv", "text/plain", etag=True),
        "/api/query": _arxiv_page,
        "/mast/api/v0/invoke": _mast_invoke,
        "/mast/api/v0.1/Download/file": _mast_download,
        "/ncbi/esearch.fcgi": checked(
            Recorded.file(FIXTURES / "ncbi" / "esearch2.xml", "text/xml"),
            db="nucleotide",
            term=NCBI_TERM,
            usehistory="y",
            retmax="0",
            tool="astrobio-train",
        ),
        "/ncbi/efetch.fcgi": _efetch,
        f"/kegg/get/{'+'.join(KEGG_COMPOUNDS)}": Recorded.file(FIXTURES / "kegg" / "compound.sample", "text/plain"),
        **{f"/kegg/get/{p}/kgml": Recorded.file(FIXTURES / "kegg" / f"{p}.xml", "text/xml") for p in KEGG_PATHWAYS},
    }
