"""llm-tiny on the real corpus: it learns well below the unigram baseline, and `generate` samples from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.llm.conftest import llm_args
from tests.trainer.conftest import BIN, run_cli


def test_llm_tiny_learns_below_the_unigram_baseline_and_generates(text_root: Path, tmp_path: Path) -> None:
    result = run_cli(llm_args(text_root, tmp_path, "train.max_steps=120", "train.eval_every=120",
                              "checkpoint.every_steps=120", "model.sample_tokens=8"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "llm-tiny"
    report = (run / "report.md").read_text()
    val = float(re.search(r"\| val_loss \| ([\d.]+) \|", report)[1])
    unigram = float(re.search(r"\| unigram_loss \| ([\d.]+) \|", report)[1])
    # the unigram baseline is ~6.96 nats/token on this corpus; 120 steps reach ~6.1
    assert val < unigram - 0.6, f"val loss {val} vs unigram {unigram}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("tokens_per_second", 0) > 0 for r in records)

    sample = run_cli([str(BIN / "astrobio-train"), "generate", "--run", str(run), "--prompt", "The archive",
                      "--max-new-tokens", "12", "--temperature", "0"], timeout=120)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("The archive") and len(sample.stdout.split("---")[0]) > len("The archive\n")
