"""Fixtures for the data-job tests: the replay server, a config pointing at it, storage roots (a local folder
and a real S3 server), and a real Pushgateway."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import require_tool
from tests.datajobs import s3server
from tests.datajobs.helpers import FAST_HTTP
from tests.datajobs.replay import ReplayServer
from tests.datajobs.routes import KEGG_COMPOUNDS, KEGG_PATHWAYS, routes


@pytest.fixture
def replay():
    with ReplayServer(routes()) as server:
        yield server


@pytest.fixture
def config(tmp_path, replay):
    """Write a --config YAML pointing every source at the replay server; returns a function(**overrides)."""

    def write(**sections: dict) -> Path:
        doc = {
            "nasa-exoplanets": {"tap_url": replay.url("/TAP/sync"), "http": dict(FAST_HTTP)},
            "exoplanet-catalogue": {"csv_url": replay.url("/oec.csv"), "http": dict(FAST_HTTP)},
            "text": {
                "arxiv_url": replay.url("/api/query"),
                "arxiv_page_size": 2,
                "arxiv_max_docs": 10,
                "vocab_size": 300,
                "val_fraction": 0.3,
                "http": dict(FAST_HTTP),
            },
            "mast": {
                "mast_url": replay.url("/mast"),
                "targets": ["L 98-59"],
                "product_regex": r"\.csv$",
                "http": dict(FAST_HTTP),
            },
            "ncbi": {"eutils_url": replay.url("/ncbi"), "max_records": 6, "batch_size": 3, "http": dict(FAST_HTTP)},
            "kegg": {
                "kegg_url": replay.url("/kegg"),
                "compounds": KEGG_COMPOUNDS,
                "pathways": KEGG_PATHWAYS,
                "http": dict(FAST_HTTP),
            },
        }
        for source, values in sections.items():
            doc.setdefault(source.replace("_", "-"), {}).update(values)
        path = tmp_path / f"datajobs-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch) -> str:
    """A storage root: a local folder, or a fresh bucket on the real S3 server (credentials via env only)."""
    if request.param == "local":
        return str(tmp_path / "data")
    ceph = request.getfixturevalue("ceph")
    for key, value in ceph.env.items():
        monkeypatch.setenv(key, value)
    import s3fs

    bucket = f"astro-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/datasets-root"


@pytest.fixture
def pushgateway(tmp_path):
    binary = require_tool("prometheus-pushgateway")
    port = s3server.free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'pushgateway.state'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        s3server._wait(lambda: _ready(url), 30, "the pushgateway")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).ok
    except requests.RequestException:
        return False
