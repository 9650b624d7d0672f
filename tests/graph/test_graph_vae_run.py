"""graph-vae through the CLI on the bundled QM9 snapshot: report, predict/sample, DDP 2 = 1, kill -9 resume."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from tests.conftest import BIN, REPO, checkpoint_steps, cli_env, free_port, run_cli, train_losses, wait_for
from trainer.bundle import load_bundle
from trainer.components.base import InvalidInput

TINY = ("model.hidden=32", "model.latent=8", "model.layers=1", "model.kl_anneal_steps=20", "data.batch_size=32",
        "train.max_steps=60", "train.eval_every=20", "train.eval_batches=2", "checkpoint.every_steps=10",
        "checkpoint.keep_last=10", "train.precision=fp32", "model.report_samples=200", "model.report_fcd=false",
        "model.report_reference=100", "schedule.name=constant", "schedule.warmup_steps=5")


def args(root: Path, run_dir: Path, *overrides: str) -> list[str]:
    sets = [f"data.root={root}", f"logging.run_dir={run_dir}", *TINY, *overrides]
    return [str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "graph-vae-qm9.yaml"),
            *(x for s in sets for x in ("--set", s))]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("molecules")
    done = run_cli([str(BIN / "astrobio-data"), "run", "molecules", "--from-snapshot", "--root", str(path)])
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def trained(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs")
    done = run_cli(args(root, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir / "graph-vae-qm9"


@pytest.mark.slow
def test_report_has_the_comparison_tables_and_figures(trained: Path) -> None:
    report = (trained / "report.md").read_text()
    for row in ("| valid | 1.0000 |", "valid (constraints off)", "unique@10k", "novelty", "SNN/Test", "IntDiv",
                "GraphVAE (Simonovsky & Komodakis 2018", "MolGAN (De Cao & Kipf 2018", "| JTN-VAE |",
                "exact reconstruction (test)"):
        assert row in report, row
    assert (trained / "samples.png").stat().st_size > 1000 and (trained / "interpolation.png").is_file()
    losses = train_losses(trained)
    assert sum(losses[s] for s in range(51, 61)) < sum(losses[s] for s in range(1, 11)) * 0.8
    # the collapse check reaches the report and the bundle (60 tiny steps are too few for z to carry much; the
    # model test trains longer); the free bits keep the KL off zero
    report_metrics = json.loads((trained / "best" / "bundle.json").read_text())["metrics"]
    assert "| recon NLL shuffled z (test, nats) |" in report and report_metrics["active_units"] > 0
    assert report_metrics["KL_(test,_nats)"] > 2.0, report_metrics


def test_predict_and_sample_from_the_bundle(trained: Path, tmp_path: Path) -> None:
    loaded = load_bundle(trained)  # the bundle alone: state, config, weights; no dataset
    assert loaded.component.name == "graph-vae" and loaded.component.state().meta["max_atoms"] == 9
    out = loaded.predict(pa.table({"smiles": ["CCO", "OC1CC1C#N"]}))
    assert out.column_names == ["smiles", "latent_mean", "reconstruction"] and len(out["latent_mean"][0]) == 8
    with pytest.raises(InvalidInput) as bad:
        loaded.predict(pa.table({"smiles": ["CCO", "C(C("]}))
    assert bad.value.problems == [(2, "smiles", "C(C(", "unparseable SMILES")]
    device = torch.device("cpu")
    first = loaded.component.sample(loaded.model, 50, 7, device)
    assert first == loaded.component.sample(loaded.model, 50, 7, device)
    assert first != loaded.component.sample(loaded.model, 50, 8, device)
    assert all(s is not None and "." not in s for s in first)  # constraints on: one connected molecule each
    out_file = tmp_path / "molecules.smi"
    cli = run_cli([str(BIN / "astrobio-train"), "sample", "-m", str(trained), "-n", "50", "--out", str(out_file),
                   "--seed", "7"])
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert out_file.read_text().splitlines() == first


@pytest.mark.slow
def test_ddp_two_ranks_match_one_rank(trained: Path, root: Path, tmp_path: Path) -> None:
    two = run_cli([*args(root, tmp_path, "distributed.strategy=ddp", "data.batch_size=16", "train.max_steps=20"),
                   "--nproc-per-node", "2"], PET_MASTER_PORT=str(free_port()))
    assert two.returncode == 0, two.stderr[-3000:]
    one, got = train_losses(trained), train_losses(tmp_path / "graph-vae-qm9")
    assert sorted(got) == list(range(1, 21))
    worst = max(abs(one[s] - got[s]) / abs(one[s]) for s in got)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"


@pytest.mark.slow
def test_kill_9_then_resume_matches_the_uninterrupted_run(trained: Path, root: Path, tmp_path: Path) -> None:
    run = tmp_path / "graph-vae-qm9"
    proc = subprocess.Popen(args(root, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    wait_for(lambda: 10 in checkpoint_steps(run), 180, "the step-10 checkpoint", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = max(train_losses(run))
    assert killed_at < 60, "the run finished before it was killed"
    resumed = run_cli(args(root, tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    expected, got = train_losses(trained), train_losses(run)
    assert sorted(got) == sorted(expected)
    assert all(abs(got[s] - expected[s]) <= 1e-6 * abs(expected[s]) for s in expected), "resume diverged"
