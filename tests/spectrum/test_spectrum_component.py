"""Component `spectrum` on the shared loop: a tiny run on spectra made by the real data job; report, resume,
predict on the real WASP-39b spectrum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch
import yaml

from datajobs.forward_model import SNAPSHOT
from tests.conftest import BIN, REPO, cli_env, free_port, require_module, run_cli, train_losses
from trainer.bundle import load_bundle

WASP39B_CSV = SNAPSHOT / "wasp39b_jwst_prism_g395h.csv"
TINY = ("model.channels=8", "model.context=16", "model.hidden=32", "model.flow_layers=4", "model.min_rows=100",
        "model.posterior_samples=200", "model.report_spectra=60", "data.batch_size=64", "schedule.name=constant",
        "schedule.warmup_steps=0", "train.eval_every=20", "checkpoint.every_steps=20", "train.log_every=20")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spectra")
    cfg = root / "sim.yaml"
    cfg.write_text(yaml.safe_dump({"spectra-sim": {"n_spectra": 400, "chunk_size": 100, "batch_size": 50,
                                                   "n_layers": 16, "workers": 2, "seed": 1}}))
    proc = run_cli([str(BIN / "astrobio-data"), "run", "spectra-sim", "--root", str(root / "data"),
                    "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr
    return root / "data"


def train(sim_root: Path, run_dir: Path, *extra: str):
    sets = [f"data.root={sim_root}", f"logging.run_dir={run_dir}", *TINY, *extra]
    return run_cli([str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "spectrum.yaml"),
                    *(x for s in sets for x in ("--set", s))])


@pytest.fixture(scope="module")
def trained(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs")
    proc = train(sim_root, run_dir, "train.max_steps=80")
    assert proc.returncode == 0, proc.stderr
    return run_dir / "spectrum"


def test_run_reports_r2_and_coverage(trained: Path) -> None:
    from trainer.models.retrieval import RetrievalEnsemble

    model = load_bundle(trained / "best", "cpu").model
    assert isinstance(model, RetrievalEnsemble) and len(model.members) == 3  # configs/spectrum.yaml: members 3
    report = (trained / "report.md").read_text()
    assert "Held-out retrieval" in report and "95% coverage" in report
    for p in ("temperature", "log_h2o", "log_co2", "radius"):
        assert f"| {p} |" in report
    assert len(train_losses(trained)) == 80
    losses = train_losses(trained)
    assert np.mean([losses[s] for s in range(71, 81)]) < np.mean([losses[s] for s in range(1, 11)])
    # coverage of the 95% intervals on the 60 held-out spectra (binomial sd ~0.03): an over-confident flow fails
    metrics = json.loads((trained / "best" / "bundle.json").read_text())["metrics"]
    coverage = {k: v for k, v in metrics.items() if k.startswith("coverage95_")}
    assert len(coverage) == 7 and all(0.85 <= v <= 1.0 for v in coverage.values()), coverage
    assert metrics["nll_posterior"] < metrics["nll_prior"] - 0.3, metrics  # beats the prior (80 steps: ~0.6 nats)
    assert "under the prior (the baseline)" in report


def test_validation_scores_the_mixture_that_is_sampled_not_the_members_mean(trained: Path) -> None:
    bundle = load_bundle(trained / "best", "cpu")
    comp, model = bundle.component, bundle.model
    x, _ = comp.read_spectrum(str(WASP39B_CSV), [])
    x = torch.from_numpy(x).repeat(16, 1, 1)
    y = torch.from_numpy(comp.to_latent(np.array([comp.lo + (comp.hi - comp.lo) * f
                                                  for f in np.linspace(0.1, 0.9, 16)])))
    batch = (x, y, torch.zeros(16))
    with torch.no_grad():
        validation = float(comp.evaluation_step(model, batch).loss)
        members_mean = float(comp.training_step(model, batch).loss)
        mixture = float(-model.log_prob(x, y).mean())
    assert validation == pytest.approx(mixture, rel=1e-6)
    assert validation < members_mean  # log of a mean density > mean of the log densities unless members agree


@pytest.mark.slow
def test_resume_continues_exactly(sim_root: Path, trained: Path, tmp_path: Path) -> None:
    first = train(sim_root, tmp_path, "train.max_steps=40")
    assert first.returncode == 0, first.stderr
    second = train(sim_root, tmp_path, "train.max_steps=80")
    assert second.returncode == 0, second.stderr
    assert "resumed from step" in second.stderr
    got, expected = train_losses(tmp_path / "spectrum"), train_losses(trained)
    assert sorted(got) == sorted(expected)
    assert [s for s in expected if got[s] != expected[s]] == []


def test_predict_file_on_wasp39b_from_the_bundle(trained: Path, tmp_path: Path) -> None:
    bundle = load_bundle(trained / "best", "cpu")  # no dataset needed: the state comes from the bundle
    out = tmp_path / "wasp39b.csv"
    line = bundle.component.predict_file(bundle.model, str(WASP39B_CSV), str(out), torch.device("cpu"),
                                         {"mask_um": "3.9-4.2", "samples": 300})
    used = int(line.split(" from ")[1].split(" of ")[0])
    assert 100 < used < 171  # PRISM + G395H points minus the masked SO2 range
    table = pacsv.read_csv(out).to_pydict()
    assert table["parameter"] == bundle.component.parameters
    for lo, q2, q97, hi in zip(table["prior_low"], table["q02.5"], table["q97.5"], table["prior_high"], strict=True):
        assert lo <= q2 <= q97 <= hi
    with np.load(out.with_suffix(".samples.npz"), allow_pickle=False) as z:
        assert z["samples"].shape == (300, 7)
    assert json.loads(out.with_suffix(".json").read_text())["mask_um"] == [[3.9, 4.2]]


def test_cli_predict_on_the_bundled_wasp39b_spectrum(trained: Path, tmp_path: Path) -> None:
    from datajobs.errors import DataError

    out = tmp_path / "posterior.csv"
    proc = run_cli([str(BIN / "astrobio-train"), "predict", "-m", str(trained), "--input", str(WASP39B_CSV),
                    "--output", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "posterior of 7 parameters" in proc.stderr
    table = pacsv.read_csv(out).to_pydict()
    assert len(table["median"]) == 7 and all(np.isfinite(table["median"]))
    assert json.loads(out.with_suffix(".json").read_text())["mask_um"] == [[3.9, 4.2]]  # SO2 masked by default
    inflated = run_cli([str(BIN / "astrobio-train"), "predict", "-m", str(trained), "--input", str(WASP39B_CSV),
                        "--output", str(tmp_path / "inflated.csv"), "--option", "error_scale=1.5", "--option",
                        "samples=50"])
    assert inflated.returncode == 0, inflated.stderr
    assert json.loads((tmp_path / "inflated.json").read_text())["error_scale"] == 1.5
    with np.load(tmp_path / "inflated.samples.npz", allow_pickle=False) as z:
        assert z["samples"].shape == (50, 7)
    for option, says in (("colour=red", "no predict option 'colour'"), ("samples", "KEY=VALUE")):
        proc = run_cli([str(BIN / "astrobio-train"), "predict", "-m", str(trained), "--input", str(WASP39B_CSV),
                        "--output", str(tmp_path / "x.csv"), "--option", option])
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            option, proc.stderr)
    bundle = load_bundle(trained, "cpu")  # the CLI turns the same DataError into one line and exit 2
    for options, says in (({"samples": "many"}, "is not an integer"), ({"error_scale": "0"}, "must be > 0"),
                          ({"mask_um": "4"}, "is not LOW-HIGH")):
        with pytest.raises(DataError, match=says):
            bundle.predict_file(str(WASP39B_CSV), str(tmp_path / "x.csv"), options=options)
    bad = tmp_path / "bad.csv"
    bad.write_text("wavelength_um,depth_ppm\n1.0,20000\n")
    with pytest.raises(DataError, match="error_ppm"):
        bundle.predict_file(str(bad), str(tmp_path / "x.csv"))


def test_importance_weights_turn_the_network_draws_into_the_prior_under_a_flat_likelihood(trained: Path) -> None:
    """With L = 1 the weights are p(z) / q(z | spectrum): the reweighted draws must follow the uniform prior and
    the mean weight (the evidence) must be 1, whatever the network learnt. A wrong log q or prior fails both."""
    from scipy.stats import kstest

    from trainer.components.spectrum_importance import importance_posterior

    bundle = load_bundle(trained / "best", "cpu")
    comp = bundle.component
    x, _ = comp.read_spectrum(str(WASP39B_CSV), [])
    raw = comp.posterior(bundle.model, x, 5000, torch.device("cpu"))[0]
    result = importance_posterior(bundle.model, x, comp.from_latent, lambda p: np.zeros(len(p)), 40000, 5000,
                                  torch.device("cpu"))
    uniform = [(p - lo) / (hi - lo) for p, lo, hi in zip(result.samples.T, comp.lo, comp.hi, strict=True)]
    raw_uniform = [(p - lo) / (hi - lo) for p, lo, hi in zip(raw.T, comp.lo, comp.hi, strict=True)]
    # 5000 uniform draws give a KS statistic of ~0.012 on average; the 80-step network's own draws (~0.04, up to
    # 0.08) are not the prior, the reweighted ones (max ~0.02) are
    assert np.mean([kstest(u, "uniform").statistic for u in raw_uniform]) > 0.025
    assert max(kstest(u, "uniform").statistic for u in uniform) < 0.035
    # the evidence estimate scatters by about 1 / sqrt(effective samples) around log 1 = 0
    assert abs(result.log_evidence) < 4 / np.sqrt(result.effective_samples)
    assert result.effective_samples < result.proposals


def test_predict_with_importance_sampling_reports_the_effective_sample_size(trained: Path, tmp_path: Path) -> None:
    from datajobs.errors import DataError

    bundle = load_bundle(trained / "best", "cpu")
    out = tmp_path / "wasp39b.csv"
    line = bundle.predict_file(str(WASP39B_CSV), str(out), options={"importance": "300", "samples": "200"})
    assert "effective of 300 proposals" in line
    info = json.loads(out.with_suffix(".json").read_text())["importance"]
    assert info["proposals"] == 300 and 1 <= info["effective_samples"] <= 300 and np.isfinite(info["log_evidence"])
    with np.load(out.with_suffix(".samples.npz"), allow_pickle=False) as z:
        assert z["samples"].shape == (200, 7)
    bundle.component.simulator = None  # as a bundle trained on an imported grid has it
    with pytest.raises(DataError, match="retrain on spectra-sim"):
        bundle.predict_file(str(WASP39B_CSV), str(tmp_path / "x.csv"), options={"importance": "10"})


def test_a_single_network_run_predicts_and_reweights_its_own_density(sim_root: Path, tmp_path: Path) -> None:
    """configs/spectrum.yaml trains a mixture of 3 (the `trained` fixture); model.members=1 is one network, the
    bundle layout from before members existed. It predicts, and under a flat likelihood its importance weights
    p(z) / q(z) give the prior back with evidence 1."""
    from scipy.stats import kstest

    from trainer.components.spectrum_importance import importance_posterior
    from trainer.models.retrieval import RetrievalModel

    proc = train(sim_root, tmp_path, "train.max_steps=40", "model.members=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(tmp_path / "spectrum", "cpu")
    comp, model = bundle.component, bundle.model
    assert isinstance(model, RetrievalModel)
    out = tmp_path / "wasp39b.csv"
    assert "posterior of 7 parameters" in bundle.predict_file(str(WASP39B_CSV), str(out), options={"samples": "300"})
    with np.load(out.with_suffix(".samples.npz"), allow_pickle=False) as z:
        assert z["samples"].shape == (300, 7) and np.isfinite(z["samples"]).all()
    x, _ = comp.read_spectrum(str(WASP39B_CSV), [])
    result = importance_posterior(model, x, comp.from_latent, lambda p: np.zeros(len(p)), 40000, 5000,
                                  torch.device("cpu"))
    uniform = [(p - lo) / (hi - lo) for p, lo, hi in zip(result.samples.T, comp.lo, comp.hi, strict=True)]
    assert max(kstest(u, "uniform").statistic for u in uniform) < 0.035
    assert abs(result.log_evidence) < 4 / np.sqrt(result.effective_samples)


def test_training_batches_get_a_fresh_noise_draw_and_validation_batches_none(trained: Path) -> None:
    bundle = load_bundle(trained / "best", "cpu")
    comp, model = bundle.component, bundle.model
    x, _ = comp.read_spectrum(str(WASP39B_CSV), [])
    x = torch.from_numpy(x).repeat(8, 1, 1)
    y = torch.zeros(8, len(comp.parameters))

    def loss(xb: torch.Tensor, draw: float) -> float:
        with torch.no_grad():
            return float(comp.training_step(model, (xb, y, torch.full((8,), draw))).loss)

    assert loss(x, 1.0) != loss(x, 1.0)  # a new draw each call
    assert loss(x, 0.0) == loss(x, 0.0)  # the stored (noisy) spectrum as it is
    silent = x.clone()
    silent[:, 1] = 0.0  # zero error bars: the draw adds nothing
    assert loss(silent, 1.0) == loss(silent, 0.0)


def test_error_bar_inflation_scales_each_training_spectrum_by_one_factor(trained: Path) -> None:
    comp = load_bundle(trained / "best", "cpu").component
    comp.model_cfg = comp.model_cfg.model_copy(update={"noise_scale_max": 2.0})
    x, _ = comp.read_spectrum(str(WASP39B_CSV), [])
    x = torch.from_numpy(x).repeat(400, 1, 1)
    draw = torch.cat([torch.ones(300), torch.zeros(100)])
    torch.manual_seed(0)
    out = comp.noisy_input(x, draw)
    seen = x[:, 2] > 0
    ratio = out[:, 1][seen].reshape(400, -1) / x[:, 1][seen].reshape(400, -1)
    assert torch.allclose(ratio, ratio[:, :1])  # one factor per spectrum
    factor = ratio[:300, 0]
    assert factor.min() >= 1.0 and factor.max() <= 2.0 and factor.max() - factor.min() > 0.8
    torch.testing.assert_close(out[300:], x[300:].float())  # stored spectra are left alone
    pulls = ((out[:300, 0] - x[:300, 0]) / out[:300, 1])[seen[:300]]
    assert abs(float(pulls.std()) - 1.0) < 0.02  # the noise follows the inflated error bars


def test_the_uniform_prior_is_the_flows_standard_normal_base(trained: Path) -> None:
    """The probit map: prior draws become N(0, 1) latents (what an uninformative posterior must look like to the
    flow) and map back to themselves inside the prior box."""
    comp = load_bundle(trained / "best", "cpu").component
    rng = np.random.default_rng(0)
    params = comp.lo + (comp.hi - comp.lo) * rng.uniform(size=(20000, len(comp.parameters)))
    z = comp.to_latent(params)
    assert np.abs(z.mean(axis=0)).max() < 0.03 and np.abs(z.std(axis=0) - 1).max() < 0.03
    assert np.abs(np.mean(np.abs(z) > 1.96, axis=0) - 0.05).max() < 0.01  # Gaussian tails, not logistic (0.13)
    np.testing.assert_allclose(comp.from_latent(z.astype(float)), params, rtol=1e-4,
                               atol=1e-5 * float((comp.hi - comp.lo).max()))


def test_a_bundle_with_the_old_input_scaling_is_refused_with_the_retrain_command(trained: Path,
                                                                                 tmp_path: Path) -> None:
    """Bundles made before 2026-12-03 scaled each bin by its own training spread and have no relative_gain;
    their weights do not fit the current encoder, so loading one must stop with one line, not give numbers."""
    import shutil

    from datajobs.errors import DataError

    old = tmp_path / "old-bundle"
    shutil.copytree(trained / "best", old)
    state = json.loads((old / "component.json").read_text())
    del state["meta"]["input"]
    (old / "component.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match=r"retrain it: astrobio-train run -c configs/spectrum\.yaml"):
        load_bundle(old, "cpu")


@pytest.mark.slow
def test_ddp_two_ranks_match_one_rank_with_the_same_global_batch(sim_root: Path, tmp_path: Path) -> None:
    """Two gloo ranks of 32 spectra equal one process of 64. The fresh noise draw is per rank (like dropout),
    so it is off here."""
    common = ("train.max_steps=40", "train.precision=fp32", "model.resample_noise=false")
    one = train(sim_root, tmp_path / "one", "data.batch_size=64", *common)
    assert one.returncode == 0, one.stderr[-3000:]
    sets = [f"data.root={sim_root}", f"logging.run_dir={tmp_path / 'two'}", *TINY, "data.batch_size=32", *common,
            "distributed.strategy=ddp"]
    two = run_cli([str(BIN / "astrobio-train"), "run", "-c", str(REPO / "configs" / "spectrum.yaml"),
                   *(x for s in sets for x in ("--set", s)), "--nproc-per-node", "2"],
                  PET_MASTER_PORT=str(free_port()))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = train_losses(tmp_path / "one" / "spectrum"), train_losses(tmp_path / "two" / "spectrum")
    assert sorted(a) == sorted(b) == list(range(1, 41))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    assert worst < 1e-4, f"largest relative difference {worst:.2e}"


@pytest.mark.slow
def test_sampler_bench_compares_the_network_with_dynesty_on_a_held_out_spectrum(sim_root: Path, trained: Path,
                                                                                 tmp_path: Path) -> None:
    """bench.spectrum_sampler end to end, shortened: dynesty (15 live points, a loose stop) on one held-out
    PRISM spectrum of the fixture set, then `compare` writes the KS table, the speed line and the calibration."""
    require_module("dynesty", "the sampler baseline needs the science extra")
    out = tmp_path / "cmp"

    def bench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench.spectrum_sampler", *args], cwd=REPO, env=cli_env(),
                              capture_output=True, text=True, timeout=600)

    sample = bench("sample", "--root", str(sim_root), "--out", str(out), "--n-test", "1", "--no-wasp39b",
                   "--n-layers", "16", "--nlive", "15", "--dlogz", "50", "--bootstrap", "0")
    assert sample.returncode == 0, sample.stderr[-3000:]
    [done] = list(out.glob("sampler-test-*.npz"))
    with np.load(done, allow_pickle=False) as z:
        assert z["samples"].shape[1] == 7 and np.isfinite(z["truth"]).all()
    compare = bench("compare", "--model", str(trained), "--root", str(sim_root), "--out", str(out),
                    "--importance", "64", "--importance-coverage", "3", "--importance-coverage-proposals", "32")
    assert compare.returncode == 0, compare.stderr[-3000:]
    summary = json.loads((out / "sampler_comparison.json").read_text())
    assert summary["names"] == [done.stem.removeprefix("sampler-")]
    assert len(summary["ks"][0]) == 7 and all(0 < k <= 1 for k in summary["ks"][0])
    assert summary["ks_simulated"] == pytest.approx(summary["ks_mean"])
    text = (out / "sampler_comparison.md").read_text()
    assert "Mean KS distance" in text and "Speed: sampler" in text and (out / "calibration.png").is_file()
    [reweighted] = summary["importance"]
    assert len(reweighted["ks"]) == 7 and 0 < reweighted["effective_samples"] <= 64
    assert np.isfinite(reweighted["log_evidence"]) and "Network + importance sampling" in text
    assert "Calibration of the importance-sampled posterior on 3 test-split" in text
    [shape] = summary["shape"]
    assert set(summary["truth_inside"]) == {"sampler68", "sampler95", "network68", "network95"}
    assert all(0 <= v <= 7 for v in summary["truth_inside"].values())
    assert summary["truth_inside"]["sampler68"] <= summary["truth_inside"]["sampler95"]
    assert "True values inside the central intervals" in text
    with np.load(done, allow_pickle=False) as z:
        assert json.loads(str(z["settings"]))["nlive"] == 15
    assert all(w > 0 for w in shape["width_ratio"]) and all(d >= 0 for d in shape["mean_shift"])
    assert summary["model"] == str(trained)
    # the same spectrum sampled again with another seed and dynesty's slice proposals: `agreement` measures how
    # far two references of the same spectrum are apart
    other = tmp_path / "seed1"
    again = bench("sample", "--root", str(sim_root), "--out", str(other), "--n-test", "1", "--no-wasp39b",
                  "--n-layers", "16", "--nlive", "15", "--dlogz", "50", "--seed", "1", "--sample", "rslice")
    assert again.returncode == 0, again.stderr[-3000:]
    with np.load(other / done.name, allow_pickle=False) as z:
        assert json.loads(str(z["settings"])) == {"nlive": 15, "dlogz": 50.0, "bootstrap": None, "sample": "rslice",
                                                  "seed": 1, "n_layers": 16}
    agreement = bench("agreement", "--reference", str(out), "--other", str(other))
    assert agreement.returncode == 0, agreement.stderr[-3000:]
    [row] = json.loads((other / "agreement.json").read_text())
    assert row["name"] == done.stem.removeprefix("sampler-") and len(row["ks"]) == 7
    assert all(0 < k <= 1 for k in row["ks"])  # different seeds: not the same draws
    same = bench("agreement", "--reference", str(out), "--other", str(out))
    assert same.returncode == 0, same.stderr[-3000:]
    assert json.loads((out / "agreement.json").read_text())[0]["ks"] == [0.0] * 7  # a run against itself
    nothing = bench("agreement", "--reference", str(out), "--other", str(tmp_path))
    assert nothing.returncode != 0 and "run `sample` into both" in nothing.stderr
