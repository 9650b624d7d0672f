"""metabolic-links: the CN3/AA3 baselines on a hand-made graph, the held-out edge split, and a short run on
e_coli_core (an honest report vs the baselines, bundle predict reproducing the report's test AUROC)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.csv as pcsv
import pytest

from datajobs.cli import main as data_main
from datajobs.store import Store
from tests.conftest import REPO, require_module
from trainer.config import load_config

SHORT = ("train.max_steps=300", "train.eval_every=50", "checkpoint.every_steps=100", "model.bootstrap=200")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("libsbml", "the metabolic extra")
    path = tmp_path_factory.mktemp("metabolic")
    cfg = path / "metabolic.yaml"
    cfg.write_text("metabolic:\n  models: [e_coli_core.xml]\n")
    assert data_main(["run", "metabolic", "--from-snapshot", "--config", str(cfg), "--root", str(path)]) == 0
    return path


def component(root: Path, *overrides: str):
    require_module("torch_geometric", "the graph extra")
    from trainer.components.metabolic_links import MetabolicLinksComponent

    cfg = load_config(REPO / "configs" / "metabolic-links.yaml", [f"data.root={root}", *overrides])
    return MetabolicLinksComponent(cfg)


def test_cn3_and_aa3_on_a_hand_made_graph() -> None:
    require_module("scipy", "the metabolic extra")
    from trainer.components.metabolic_links import l3_scores

    # metabolites 0..4, reactions 0..2; metabolite 4 is a hub in all three reactions
    edges = np.array([(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (4, 0), (4, 1), (4, 2)])
    pairs = np.array([(0, 1), (0, 2), (3, 0), (2, 0)])
    s = l3_scores(edges, 5, 3, pairs)
    # walks m - r' - m' - r: (0, r1): 0-r0-1-r1, 0-r0-4-r1; (0, r2): 0-r0-4-r2; (3, r0): 3-r2-4-r0;
    # (2, r0): 2-r1-1-r0, 2-r1-4-r0, 2-r2-4-r0
    assert s["CN3"].tolist() == [2, 1, 1, 3]
    w = {k: 1 / math.sqrt(math.log(k)) for k in (2, 3, 4)}  # k_r0 = 3, k_r1 = 3, k_r2 = 3; k_1 = 2, k_4 = 3
    expected = [w[3] * w[2] + w[3] * w[3], w[3] * w[3], w[3] * w[3], w[3] * w[2] + w[3] * w[3] + w[3] * w[3]]
    assert np.allclose(s["AA3"], expected)
    assert s["AA3"][0] > s["AA3"][1]  # a path through the non-hub metabolite 1 counts more than one through 4


@pytest.mark.slow
def test_split_holds_test_edges_out_of_training_and_negatives_are_typed_non_edges(root: Path) -> None:
    c = component(root)
    data = c.build_data(Store(str(root)))
    version = Store(str(root)).open("metabolic@latest")
    edges = version.read_table("edges.parquet")
    all_edges = set(zip(edges["metabolite"].to_pylist(), (r - 72 for r in edges["reaction"].to_pylist()), strict=True))
    train, test = data.train.items[0], c.test_items[0]
    train_known = {tuple(p) for p in train["known"].tolist()}  # message edges + supervision edges
    test_pos = {tuple(p) for p, y in zip(test["pairs"].tolist(), test["labels"], strict=True) if y == 1}
    test_neg = [tuple(p) for p, y in zip(test["pairs"].tolist(), test["labels"], strict=True) if y == 0]
    assert len(test_pos) == 36 and len(test_neg) == 36
    assert not test_pos & train_known and test_pos <= all_edges
    assert not {tuple(p) for p in test["graph"].edges.tolist()} & test_pos  # the test-time graph lacks them too
    assert not set(test_neg) & all_edges
    assert all(0 <= m < 72 and 0 <= r < 95 for m, r in test_neg)  # (metabolite, reaction): bipartite types
    batch = data.train[0]  # training negatives drawn per item: typed non-edges of the training graph
    m = 72
    pairs, labels = batch["pairs"].numpy(), batch["labels"].numpy()
    assert (pairs[0] < m).all() and (pairs[1] >= m).all()
    neg = {(a, b - m) for a, b, y in zip(pairs[0], pairs[1], labels, strict=True) if y == 0}
    assert neg and not neg & train_known
    again = component(root).build_data(Store(str(root)))
    assert np.array_equal(again.test.items[0]["pairs"], test["pairs"])  # the split is fixed by the seed
    other = component(root, "data.split_seed=1").build_data(Store(str(root)))
    assert not np.array_equal(other.test.items[0]["pairs"], test["pairs"])


@pytest.fixture(scope="module")
def trained(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_module("torch_geometric", "the graph extra")
    from trainer.cli import main

    run_dir = tmp_path_factory.mktemp("runs")
    sets = [f"data.root={root}", f"logging.run_dir={run_dir}", *SHORT]
    assert main(["run", "-c", str(REPO / "configs" / "metabolic-links.yaml"),
                 *(x for s in sets for x in ("--set", s))]) == 0
    return run_dir / "metabolic-links"


@pytest.mark.slow
def test_short_run_on_e_coli_core_is_reported_honestly_and_the_bundle_reproduces_it(trained: Path) -> None:
    """Trained on e_coli_core alone (72 test pairs), the model is level with CN3/AA3 (300 steps: AUROC 0.804 vs
    0.785, interval of the gain includes 0; 600 steps: 0.783 vs 0.785); trained with iJO1366 and iYS1720 it wins
    (0.870, docs/components.md). So this asserts that it learned (AUROC well above chance), that the report's
    goal column states the measured comparison, and that the bundle reproduces the report's numbers."""
    from sklearn.metrics import roc_auc_score

    from trainer.bundle import load_bundle

    report = (trained / "report.md").read_text()
    metrics = json.loads((trained / "best" / "bundle.json").read_text())["metrics"]
    auroc = {k: metrics[f"e_coli_core_auroc_{k}"] for k in ("model", "CN3", "AA3")}
    assert auroc["model"] > 0.7 and auroc["CN3"] > 0.7, auroc
    beats = auroc["model"] > auroc["CN3"] and auroc["model"] > auroc["AA3"]
    assert metrics["e_coli_core_goal_met"] == float(beats)
    row = next(line for line in report.splitlines() if line.startswith("| e_coli_core |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3].startswith(f"{auroc['model']:.3f} [") and cells[4].startswith(f"{auroc['CN3']:.3f} [")
    assert cells[10].startswith("yes") == beats and (cells[10] == "no") == (not beats)
    pairs = pcsv.read_csv(trained / "test_pairs.csv")
    labels = pairs["label"].to_numpy()
    assert roc_auc_score(labels, pairs["CN3"].to_numpy()) == pytest.approx(auroc["CN3"])
    bundle = load_bundle(trained)  # weights, the graph of training + validation edges, config; no dataset
    out = bundle.predict(pairs.select(["network", "metabolite", "reaction"]))
    assert roc_auc_score(labels, out["score"].to_numpy()) == pytest.approx(auroc["model"])


@pytest.mark.slow
def test_predict_refuses_unknown_ids_one_problem_per_row(trained: Path) -> None:
    import pyarrow as pa

    from trainer.bundle import load_bundle
    from trainer.components.base import InvalidInput

    bundle = load_bundle(trained)
    ok = bundle.predict(pa.table({"network": ["e_coli_core"], "metabolite": ["M_atp_c"], "reaction": ["R_PFK"]}))
    assert 0.0 <= ok["score"][0].as_py() <= 1.0
    with pytest.raises(InvalidInput) as bad:
        bundle.predict(pa.table({"network": ["e_coli_core", "iJO1366"], "metabolite": ["M_nope_c", "M_atp_c"],
                                 "reaction": ["R_PFK", "R_PFK"]}))
    assert [p[:2] for p in bad.value.problems] == [(1, "metabolite"), (2, "network")]
