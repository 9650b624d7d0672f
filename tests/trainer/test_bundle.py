"""Model bundles: exact round trip without the data, no unpickling, the training domain, export, LLM generate."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import BIN, run_cli
from tests.llm.conftest import QUICK as LLM_QUICK
from tests.llm.conftest import llm_args
from tests.trainer.bundle_helpers import held_out
from trainer import load_bundle
from trainer.bundle import load_weights


def test_round_trip_equals_the_in_memory_model_and_needs_no_data(bundle_run: Path, tmp_path: Path) -> None:
    best = bundle_run / "best"
    assert {p.name for p in best.iterdir()} == {"model.safetensors", "component.json", "component.npz",
                                               "config.yaml", "bundle.json", "domain.npz"}
    info = json.loads((best / "bundle.json").read_text())
    (lineage,) = info["lineage"].values()
    assert lineage["version"].startswith("exoplanet-catalogue@v") and len(lineage["manifest_sha256"]) == 64
    assert info["metrics"]["test_rmse_dex"] > 0 and info["step"] == info["best"]["step"]

    # in memory, as at the end of training: statistics fitted from the data, the best weights, the test tensors
    component, data, table = held_out(bundle_run)
    model = component.build_model(data)
    load_weights(model, best / "model.safetensors")
    component.calibrate(model, data, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        predicted = component.predict(model, table.drop_columns(["pl_bmasse"]), torch.device("cpu"))
    expected = predicted.column("pl_bmasse_pred").to_numpy()

    data_root = Path(load_bundle(bundle_run).config.data.root)
    moved = data_root.with_name("data-moved-away")
    data_root.rename(moved)
    try:
        bundle = load_bundle(bundle_run)
        got = bundle.predict(table.drop_columns(["pl_bmasse"]))
        assert np.array_equal(got.column("pl_bmasse_pred").to_numpy(), expected)
        for interval in ("pl_bmasse_lo68", "pl_bmasse_hi95"):  # the recalibrated bounds travel in the state
            assert np.array_equal(got.column(interval).to_numpy(), predicted.column(interval).to_numpy())
        exported = run_cli([str(BIN / "astrobio-train"), "export", "-m", str(bundle_run), "--out",
                            str(tmp_path / "exported")])
        assert exported.returncode == 0, exported.stderr
        again = load_bundle(tmp_path / "exported").predict(table).column("pl_bmasse_pred").to_numpy()
        assert np.array_equal(again, expected)
    finally:
        moved.rename(data_root)


def test_loading_and_predicting_never_unpickles(bundle_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, table = held_out(bundle_run)

    def refuse(*args, **kwargs):
        raise AssertionError("something in the bundle was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with pytest.raises(AssertionError, match="unpickled"):  # the guard is live
        pickle.loads(pickle.dumps(1))
    bundle = load_bundle(bundle_run)
    assert bundle.predict(table).num_rows == table.num_rows


def test_out_of_domain_inputs_are_flagged_and_held_out_rows_mostly_not(bundle_run: Path) -> None:
    bundle = load_bundle(bundle_run)
    _, _, table = held_out(bundle_run)
    inside = bundle.predict(table).column("in_training_domain").to_numpy(zero_copy_only=False)
    assert inside.mean() >= 0.9, f"only {inside.mean():.0%} of the held-out planets are in the training domain"

    train = bundle.component.training_inputs().to_pandas()
    typical = train.median().to_dict()
    far = {**typical, "pl_rade": 0.05}  # physically possible (inputs above 30 Earth radii are invalid)
    # each value inside the training range, the combination not: a very short period on a very wide orbit
    combination = {**typical, "pl_orbper": float(train.pl_orbper.quantile(0.02)),
                   "pl_orbsmax": float(train.pl_orbsmax.quantile(0.98))}
    for col in ("pl_orbper", "pl_orbsmax"):
        assert train[col].min() <= combination[col] <= train[col].max()
    out = bundle.predict(pd.DataFrame([typical, far, combination]))
    assert isinstance(out, pd.DataFrame)
    assert out.in_training_domain.tolist() == [True, False, False], out.domain_note.tolist()
    assert out.domain_note[0] == ""
    assert "pl_rade 0.05 below the training range" in out.domain_note[1]
    assert "nearest-neighbour distance" in out.domain_note[2] and "training range" not in out.domain_note[2]


def test_generate_from_an_llm_bundle_without_the_data(text_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "text"
    shutil.copytree(text_root, root)
    steps = ("train.max_steps=2", "train.eval_every=2", "checkpoint.every_steps=2", "model.sample_tokens=2")
    result = run_cli(llm_args(root, tmp_path / "runs", *LLM_QUICK, *steps), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = tmp_path / "runs" / "llm-tiny" / "best"
    assert json.loads((bundle / "component.json").read_text())["meta"]["tokenizer_json"]
    shutil.rmtree(root)
    sample = run_cli([str(BIN / "astrobio-train"), "generate", "-m", str(bundle), "--prompt", "The archive",
                      "--max-new-tokens", "4", "--temperature", "0"], timeout=120)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("The archive") and len(sample.stdout.split("---")[0]) > len("The archive\n")
