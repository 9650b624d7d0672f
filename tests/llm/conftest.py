"""Fixtures for LLM tests: the text dataset published by the real data job, and `astrobio-train` arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO, cli_env

# Small enough for two CPU cores: 12 steps of 8 windows of 64 tokens per rank. A constant schedule after
# warm-up, so an open-ended run that is killed sees the same learning rates as a 12-step one.
QUICK = ("model.seq_len=64", "train.max_steps=12", "train.eval_every=6", "train.eval_batches=2",
         "train.log_every=1", "checkpoint.every_steps=6", "model.sample_tokens=4", "train.precision=fp32",
         "schedule.name=constant", "schedule.warmup_steps=2")


@pytest.fixture(scope="session")
def text_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root holding `text` published by the real data job from the bundled corpus."""
    root = tmp_path_factory.mktemp("text-data")
    subprocess.run([BIN / "astrobio-data", "run", "text", "--from-snapshot", "--root", str(root)],
                   check=True, capture_output=True, env=cli_env())
    return root


def llm_args(text_root: Path, run_dir: Path, *overrides: str, config: str = "llm-tiny.yaml") -> list[str]:
    """`astrobio-train run` on an llm config with the test data root and run folder."""
    sets = [f"data.root={text_root}", f"logging.run_dir={run_dir}", *overrides]
    return [str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / config),
            *(x for s in sets for x in ("--set", s))]
