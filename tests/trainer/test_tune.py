"""`astrobio-train tune` end to end: real trial runs on planets, a real PostgreSQL, SIGKILL, pruning, retraining."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from tests.conftest import BIN, REPO, cli_env, run_cli, wait_for
from tests.trainer.postgres import postgres_url  # noqa: F401  (session fixture)

TINY = ["train.max_steps=30", "train.eval_every=10", "train.early_stopping_patience=null",
        "schedule.warmup_steps=0", "checkpoint.every_steps=1000", "train.precision=fp32", "train.device=cpu"]
SPACE = {
    "metric": "val_loss",
    "direction": "minimize",
    "pruning": {"startup_trials": 1, "warmup_steps": 0},
    "trial_set": {"model.protocol_evaluation": False},  # trials skip the report's re-trainings
    "parameters": {
        "optim.lr": {"log_uniform": [1.0e-6, 1.0e-2]},
        "model.hidden": {"choice": [16, 32]},
    },
}
PRUNE_STEPS = 150
KATIB_LINE = re.compile(r"^val_loss=[-+0-9.e]+$", re.M)


def space_file(tmp_path: Path, space: dict | None = None) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space or SPACE))
    return path


def tune_args(data_root: Path, run_dir: Path, space: Path, trials: int, *extra: str,
              sets: list[str] = TINY) -> list[str]:
    overrides = [f"data.root={data_root}", f"logging.run_dir={run_dir}", *sets]
    return [str(BIN / "astrobio-train"), "tune", "-c", str(REPO / "configs" / "planets.yaml"), "--space",
            str(space), "--trials", str(trials), "--poll", "0.2", *extra,
            *(x for s in overrides for x in ("--set", s))]


def trial_eval_steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "eval"]


@pytest.mark.slow  # a fresh `astrobio-train tune` process (torch, optuna imports): ~40 s on shared cores
def test_bad_space_is_one_line_naming_the_key(data_root: Path, tmp_path: Path) -> None:
    bad = {**SPACE, "parameters": {"optim.lr": {"log_uniform": [0.0, 1.0]}}}
    proc = run_cli(tune_args(data_root, tmp_path / "runs", space_file(tmp_path, bad), 2), timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "parameters.optim.lr" in line and "low > 0" in line


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgres(data_root: Path, tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    space, runs = space_file(tmp_path), tmp_path / "runs"
    args = tune_args(data_root, runs, space, 3, "--storage", postgres_url, "--study", "shared", "--pruner", "none",
                     "--heartbeat", "2")  # 3 trials for 2 workers: one of them claims a second
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
               for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    claimed = [set(map(int, re.findall(r"^trial (\d+) complete", out, re.M))) for out, _ in outputs]
    assert not claimed[0] & claimed[1], claimed  # no trial ran in both workers
    assert claimed[0] | claimed[1] == {t.number for t in complete}
    for t in complete:  # each trial is one whole run: evaluations once each, its bundle and report
        run = Path(t.user_attrs["run_dir"])
        assert trial_eval_steps(run) == [10, 20, 30]
        assert (run / "best" / "model.safetensors").is_file() and (run / "report.md").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
    assert all(len(KATIB_LINE.findall(out)) >= 3 for out, _ in outputs if out.count("complete") > 0)


def _trial_processes(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_sigkilled_worker_fails_its_trial_and_a_rerun_completes(data_root: Path, tmp_path: Path,
                                                                postgres_url: str) -> None:  # noqa: F811
    space, runs = space_file(tmp_path), tmp_path / "runs"
    sets = [*TINY, "train.max_steps=200"]
    args = tune_args(data_root, runs, space, 1, "--storage", postgres_url, "--study", "killed", "--pruner", "none",
                     "--heartbeat", "1", sets=sets)
    worker = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    first = runs / "killed" / "trial-0000"
    wait_for(lambda: (first / "metrics.jsonl").is_file() and '"eval"' in (first / "metrics.jsonl").read_text(),
             600, "the first trial's first evaluation", worker)
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=30)
    marker = str(first / "trial-config.yaml")
    wait_for(lambda: not _trial_processes(marker), 30, "the orphaned trial process to die with its worker")
    assert trial_eval_steps(first)[-1] < 200  # killed mid-trial
    rerun = run_cli(args, timeout=900)  # the same command again resumes the study
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=postgres_url)
    states = {t.number: t.state for t in study.trials}
    assert states[0] == optuna.trial.TrialState.FAIL
    assert sum(s == optuna.trial.TrialState.COMPLETE for s in states.values()) == 1
    assert (runs / "killed" / "tune-report.md").is_file()


@pytest.fixture(scope="module")
def pruned_study(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SQLite study with one good trial, then a clearly bad one (lr 1e-6) that the median pruner stops."""
    tmp = tmp_path_factory.mktemp("prune")
    space, runs = space_file(tmp), tmp / "runs"
    sets = [*TINY, f"train.max_steps={PRUNE_STEPS}"]  # long enough that the pruner's SIGTERM lands mid-run
    good = run_cli(tune_args(data_root, runs, space, 1, "--params", "optim.lr=0.01", "--params",
                             "model.hidden=32", "--study", "prune", sets=sets), timeout=900)
    assert good.returncode == 0, good.stderr[-3000:]
    bad = run_cli(tune_args(data_root, runs, space, 2, "--params", "optim.lr=1e-6", "--params", "model.hidden=16",
                            "--study", "prune", sets=sets), timeout=900)
    assert bad.returncode == 0, bad.stderr[-3000:]
    assert KATIB_LINE.search(good.stdout) and KATIB_LINE.search(bad.stdout)
    return runs, runs / "prune"


@pytest.mark.slow
def test_pruning_stops_the_bad_trial_early(pruned_study: tuple[Path, Path]) -> None:
    _, study_dir = pruned_study
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    trials = {t.number: t for t in study.trials}
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    assert trials[1].state == optuna.trial.TrialState.PRUNED
    assert trials[1].user_attrs["steps"] < PRUNE_STEPS
    assert max(trial_eval_steps(study_dir / "trial-0001")) < PRUNE_STEPS  # the run itself stopped, not just the study
    report = (study_dir / "tune-report.md").read_text()
    assert "| 1 | pruned |" in report and "## Parameter importances" in report
    for png in ("optimization-history.png",):
        assert (study_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_best_config_retrains_to_the_reported_metric(pruned_study: tuple[Path, Path]) -> None:
    runs, study_dir = pruned_study
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    best = yaml.safe_load((study_dir / "best-config.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(0.01) and best["logging"]["run_dir"] == str(runs)
    trial = yaml.safe_load((study_dir / "trial-0000" / "trial-config.yaml").read_text())
    assert trial["model"]["protocol_evaluation"] is False  # the space's trial_set: in each trial only
    assert "protocol_evaluation" not in best["model"]
    # the retraining checks the metric, not the test report: its re-trainings stay off here too
    proc = run_cli([str(BIN / "astrobio-train"), "run", "-c", str(study_dir / "best-config.yaml"), "--set",
                    "model.protocol_evaluation=false"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = runs / best["logging"]["run_name"]
    evals = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "eval"]
    assert min(evals) == pytest.approx(study.best_value, rel=0.02, abs=0.005)


@pytest.mark.parametrize(("parameters", "where"), [
    ({"optim.lr": {"uniform": [0.1, 0.01]}}, "parameters.optim.lr: low 0.1 must be below high 0.01"),
    ({"optim.lr": {"normal": [0, 1]}}, "parameters.optim.lr: unknown setting 'normal'"),
    ({"model.layers": {"int": [1.5, 4]}}, "parameters.model.layers: int needs integer"),
    ({"model.hidden": {"choice": []}}, "parameters.model.hidden: choice needs a non-empty list"),
    ({"optim.name": {"choice": ["adamw", "lion"]}}, "parameters.optim.name: not a valid config key or value"),
    ({"model.no_such_key": {"choice": [1, 2]}}, "parameters.model.no_such_key: not a valid config key or value"),
    ({"optim.momentum": {"uniform": [0.5, 0.9], "when": {"optim.name": "sgd"}}},
     "parameters.optim.momentum.when: 'optim.name' must be a parameter listed before it"),
])
def test_space_errors_name_the_key(tmp_path: Path, parameters: dict, where: str) -> None:
    from datajobs.errors import ConfigError
    from trainer.tune import load_space

    base = yaml.safe_load((REPO / "configs" / "planets.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        load_space(space_file(tmp_path, {**SPACE, "parameters": parameters}), base)
    assert where in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("trial_set", "where"), [
    ({"optim.lr": 0.1}, "trial_set.optim.lr: is also a searched parameter"),
    ({"model.no_such_key": 1}, "trial_set: not a valid config setting"),
])
def test_trial_set_errors_name_the_key(tmp_path: Path, trial_set: dict, where: str) -> None:
    from datajobs.errors import ConfigError
    from trainer.tune import load_space

    base = yaml.safe_load((REPO / "configs" / "planets.yaml").read_text())
    with pytest.raises(ConfigError) as err:
        load_space(space_file(tmp_path, {**SPACE, "trial_set": trial_set}), base)
    assert where in str(err.value)


def test_conditional_keys_are_sampled_only_when_their_condition_holds(tmp_path: Path) -> None:
    from trainer.tune import load_space, suggest

    base = yaml.safe_load((REPO / "configs" / "planets.yaml").read_text())
    space = load_space(REPO / "configs" / "planets-space.yaml", base)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        values = suggest(study.ask(), space)
        assert ("optim.momentum" in values) == (values["optim.name"] == "sgd")
