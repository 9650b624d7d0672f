"""Fixtures of the trainer tests: finished planets runs shared by several test files (read them, never change them)."""

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


# 30 steps with a checkpoint every 10: the uninterrupted reference of the checkpoint fault and async tests.
CHECKPOINTED = ("train.max_steps=30", "train.early_stopping_patience=null", "checkpoint.every_steps=10",
                "checkpoint.keep_last=10", "train.eval_every=10", "train.log_every=10")


@pytest.fixture(scope="session")
def checkpointed(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished synchronous CHECKPOINTED run, with checkpoints at steps 10, 20 and 30."""
    run_dir = tmp_path_factory.mktemp("checkpointed")
    result = run_cli(planets_args(data_root, run_dir, *CHECKPOINTED))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "planets"
