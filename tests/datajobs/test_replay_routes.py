"""The replay routes serve a fixture only for the query the data job sends; any other query gets 400."""

from __future__ import annotations

import json

import pytest
import requests

from datajobs.cli import main
from tests.datajobs.routes import CAOM_OBSIDS, NCBI_TERM, NCBI_WEBENV

GOOD_EFETCH = {
    "db": "nucleotide",
    "WebEnv": NCBI_WEBENV,
    "query_key": "1",
    "retstart": "0",
    "retmax": "3",
    "rettype": "gb",
    "retmode": "text",
}


def _mast(service: str, **params: object) -> dict[str, str]:
    return {"request": json.dumps({"service": service, "params": params, "format": "json"})}


@pytest.mark.parametrize(
    ("path", "good", "bad"),
    [
        (
            "/ncbi/esearch.fcgi",
            {"db": "nucleotide", "term": NCBI_TERM, "usehistory": "y", "retmax": "0", "tool": "astrobio-train"},
            {"term": "cancer"},
        ),
        ("/ncbi/efetch.fcgi", GOOD_EFETCH, {"WebEnv": "MCID_other"}),
        ("/ncbi/efetch.fcgi", GOOD_EFETCH, {"retstart": "6"}),
        ("/TAP/sync", {"query": "select pl_name from pscomppars", "format": "csv"}, {"format": "votable"}),
        ("/mast/api/v0/invoke", _mast("Mast.Name.Lookup", input="L 98-59"), _mast("Mast.Name.Lookup", input="WASP-39")),
        (
            "/mast/api/v0/invoke",
            _mast("Mast.Caom.Filtered.Position", position="124.5317560026638, -68.3130014904408, 0.01"),
            _mast("Mast.Caom.Filtered.Position", position="23.118, 60.642, 0.01"),
        ),
        (
            "/mast/api/v0/invoke",
            _mast("Mast.Caom.Products", obsid=",".join(CAOM_OBSIDS)),
            _mast("Mast.Caom.Products", obsid="2003738726"),
        ),
    ],
    ids=["esearch-term", "efetch-webenv", "efetch-page", "tap-format", "mast-name", "mast-position", "mast-obsid"],
)
def test_wrong_query_gets_400(replay, path: str, good: dict[str, str], bad: dict[str, str]) -> None:
    assert requests.get(replay.url(path), params=good, timeout=5).status_code == 200
    answer = requests.get(replay.url(path), params={**good, **bad}, timeout=5)
    assert answer.status_code == 400 and answer.text.startswith("bad request: ")


def test_a_job_with_another_query_fails_instead_of_getting_the_fixture(tmp_path, replay, config) -> None:
    cfg = config(ncbi={"term": "cancer"})
    assert main(["run", "ncbi", "--root", str(tmp_path), "--config", str(cfg)]) != 0
    assert not (tmp_path / "datasets" / "ncbi" / "LATEST").exists()
