"""The replay server's route table: URL path -> recorded response (files under tests/fixtures/)."""

from __future__ import annotations

import json

from tests.datajobs.helpers import FIXTURES
from tests.datajobs.replay import Recorded, Route

KEGG_COMPOUNDS = ["C00023", "C00017", "C00099", "C00294", "C00298", "C00348", "C00349", "C01386"]
KEGG_PATHWAYS = ["ko00010", "ko00253"]


def _arxiv_page(query: dict[str, list[str]]) -> Recorded:
    page = int(query.get("start", ["0"])[0]) // 2
    path = FIXTURES / "arxiv" / f"page-{page}.xml"
    return Recorded.file(path, "application/atom+xml") if path.exists() else Recorded(b"", "text/plain")


def _efetch(query: dict[str, list[str]]) -> Recorded:
    return Recorded.file(FIXTURES / "ncbi" / f"efetch-{query['retstart'][0]}.gb", "text/plain")


MAST_ANSWERS = {
    "Mast.Name.Lookup": "resolver.json",
    "Mast.Caom.Filtered.Position": "caom.json",
    "Mast.Caom.Products": "products_plus_fixture_row.json",
}


def _mast_invoke(query: dict[str, list[str]]) -> Recorded:
    service = json.loads(query["request"][0])["service"]
    return Recorded.file(FIXTURES / "mast" / MAST_ANSWERS[service], "application/json")


def _mast_download(query: dict[str, list[str]]) -> Recorded:
    assert query["uri"] == ["mast:FIXTURE/AT-WASP_39b_NIRISS_transmission_spectrum.csv"], query
    return Recorded.file(FIXTURES / "mast" / "AT-WASP_39b_NIRISS_transmission_spectrum.csv", "text/csv")


def routes() -> dict[str, Route]:
    return {
        "/TAP/sync": Recorded.file(FIXTURES / "nasa_tap" / "pscomppars_sync.csv", "text/csv"),
        "/oec.csv": Recorded.file(FIXTURES / "oec" / "open_exoplanet_catalogue_head300.csv", "text/plain", etag=True),
        "/api/query": _arxiv_page,
        "/mast/api/v0/invoke": _mast_invoke,
        "/mast/api/v0.1/Download/file": _mast_download,
        "/ncbi/esearch.fcgi": Recorded.file(FIXTURES / "ncbi" / "esearch2.xml", "text/xml"),
        "/ncbi/efetch.fcgi": _efetch,
        f"/kegg/get/{'+'.join(KEGG_COMPOUNDS)}": Recorded.file(FIXTURES / "kegg" / "compound.sample", "text/plain"),
        **{f"/kegg/get/{p}/kgml": Recorded.file(FIXTURES / "kegg" / f"{p}.xml", "text/xml") for p in KEGG_PATHWAYS},
    }
