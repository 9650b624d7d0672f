"""Fixtures for the k8s tests: a Pushgateway with state of its own; the data jobs' replay server and config."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tool, wait_for
from tests.datajobs.conftest import config, replay

__all__ = ["config", "pushgateway", "replay"]


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200
    except OSError:
        return False


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on 127.0.0.1; Debian's build persists to one shared file unless told otherwise."""
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            require_tool("prometheus-pushgateway"),
            f"--web.listen-address={url[7:]}",
            f"--persistence.file={tmp_path / 'pushgateway.data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _ready(url), 30, "the pushgateway", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
