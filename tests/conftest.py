"""Shared test helpers: tool lookup that skips on a laptop but fails under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"


def require_tool(name: str) -> str:
    """Path of an external tool; skip the test when missing, fail when CI=true (make test installs it)."""
    path = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path:
        return path
    message = f"{name} is not installed (run `make tools`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
