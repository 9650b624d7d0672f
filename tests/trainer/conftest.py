"""Fixtures of the trainer tests: one short planets run shared by the bundle and predict tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import planets_args, run_cli
from tests.llm.conftest import text_root  # noqa: F401  (fixture for the llm bundle test)

QUICK = ("train.max_steps=200", "train.eval_every=25", "train.log_every=50", "checkpoint.every_steps=100",
         "model.protocol_evaluation=false")


@pytest.fixture(scope="session")
def bundle_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished planets run trained on its own copy of the data root (a test may move that copy away)."""
    base = tmp_path_factory.mktemp("bundle-run")
    shutil.copytree(data_root, base / "data")
    result = run_cli(planets_args(base / "data", base / "runs", *QUICK))
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "runs" / "planets"
