"""The replay server's route table: URL path -> recorded response (files under tests/fixtures/)."""

from __future__ import annotations

from tests.datajobs.helpers import FIXTURES
from tests.datajobs.replay import Recorded, Route


def _arxiv_page(query: dict[str, list[str]]) -> Recorded:
    page = int(query.get("start", ["0"])[0]) // 2
    path = FIXTURES / "arxiv" / f"page-{page}.xml"
    return Recorded.file(path, "application/atom+xml") if path.exists() else Recorded(b"", "text/plain")


def routes() -> dict[str, Route]:
    return {
        "/TAP/sync": Recorded.file(FIXTURES / "nasa_tap" / "pscomppars_sync.csv", "text/csv"),
        "/oec.csv": Recorded.file(FIXTURES / "oec" / "open_exoplanet_catalogue_head300.csv", "text/plain", etag=True),
        "/api/query": _arxiv_page,
    }
