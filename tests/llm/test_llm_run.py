"""llm-tiny on the real corpus: it learns well below the unigram baseline, `generate` samples from it, and a
LoRA fine-tune from its weights exports merged safetensors that reproduce the adapted model."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, run_cli
from tests.llm.conftest import llm_args


@pytest.fixture(scope="module")
def tiny_run(text_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny")
    result = run_cli(llm_args(text_root, run_dir, "train.max_steps=100", "train.eval_every=100",
                              "checkpoint.every_steps=100", "model.sample_tokens=8"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir / "llm-tiny"


def test_llm_tiny_learns_below_the_unigram_baseline_and_generates(tiny_run: Path) -> None:
    report = (tiny_run / "report.md").read_text()
    val = float(re.search(r"\| val_loss \| ([\d.]+) \|", report)[1])
    unigram = float(re.search(r"\| unigram_loss \| ([\d.]+) \|", report)[1])
    # the unigram baseline is ~6.96 nats/token on this corpus; 100 steps reach ~6.1
    assert val < unigram - 0.6, f"val loss {val} vs unigram {unigram}"
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("tokens_per_second", 0) > 0 for r in records)

    sample = run_cli([str(BIN / "astrobio-train"), "generate", "--run", str(tiny_run), "--prompt", "The archive",
                      "--max-new-tokens", "12", "--temperature", "0"], timeout=120)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("The archive") and len(sample.stdout.split("---")[0]) > len("The archive\n")


def test_lora_finetune_from_the_base_exports_merged_weights(text_root: Path, tmp_path: Path, tiny_run: Path) -> None:
    from trainer.bundle import load_bundle, load_weights
    from trainer.models.transformer import Transformer
    from trainer.predict import cmd_export

    base = tiny_run / "best" / "model.safetensors"
    result = run_cli(llm_args(text_root, tmp_path, "model.finetune=lora", f"model.base_checkpoint={base}",
                              "model.lora_rank=8", "train.max_steps=10", "train.eval_every=10",
                              "checkpoint.every_steps=10", "model.sample_tokens=4"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "llm-tiny"
    cmd_export(argparse.Namespace(model=run, out=tmp_path / "merged"))
    adapted = load_bundle(run).model
    merged = load_bundle(tmp_path / "merged").model  # a plain Transformer bundle: adapters merged
    assert not hasattr(merged, "get_base_model")
    plain = Transformer(adapted.get_base_model().args)
    load_weights(plain, base)
    tokens = torch.randint(0, merged.args.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(merged(tokens), adapted(tokens), atol=1e-4)
        assert not torch.allclose(plain(tokens), adapted(tokens), atol=1e-4)  # the adapters did train
