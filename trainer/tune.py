"""`astrobio-train tune`: an Optuna study over any config key, each trial a normal `astrobio-train run`."""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datajobs.errors import AstrobioError, ConfigError, require
from datajobs.store import write_local_atomic

log = logging.getLogger("astrobio.tune")

KINDS = ("log_uniform", "uniform", "int", "choice")
PRUNERS = ("median", "hyperband", "none")
TRIAL_FAILURES_IN_A_ROW = 3  # a worker whose trials keep failing stops (a broken config, not bad luck)
PR_SET_PDEATHSIG = 1
STORAGE_ATTEMPTS = 5
STORAGE_ENV = "ASTROBIO_TUNE_STORAGE"  # the URL from a Secret, kept out of the command line


@dataclass
class Param:
    """One searched config key: its distribution and the condition under which it exists."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: list[Any] = field(default_factory=list)
    step: int = 1
    log: bool = False
    when: dict[str, list[Any]] = field(default_factory=dict)

    def probes(self) -> list[Any]:
        """Values the config must accept: every choice, or both bounds."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


@dataclass
class Space:
    """What a space file says: the metric and its direction, the parameters, pruning and sampler settings."""

    path: Path
    metric: str
    direction: str
    params: list[Param]
    seed: int | None = None
    startup_trials: int = 2
    warmup_steps: int = 0
    trial_set: dict[str, Any] = field(default_factory=dict)  # set in each trial's config, not in best-config.yaml

    @property
    def record_key(self) -> str:
        """The key of the metrics.jsonl evaluation record (evaluations run on the validation split)."""
        return self.metric.removeprefix("val_")


def _bad(path: Path, where: str, why: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {why}")


def _parse_param(path: Path, key: str, spec: Any) -> Param:
    where = f"parameters.{key}"
    if not isinstance(spec, dict):
        raise _bad(path, where, f"expected a mapping with one of {', '.join(KINDS)}")
    kinds = [k for k in spec if k in KINDS]
    unknown = [k for k in spec if k not in (*KINDS, "step", "log", "when")]
    if unknown:
        raise _bad(path, where, f"unknown setting {unknown[0]!r} (allowed: {', '.join(KINDS)}, step, log, when)")
    if len(kinds) != 1:
        raise _bad(path, where, f"expected exactly one of {', '.join(KINDS)}, got {kinds or 'none'}")
    kind, value = kinds[0], spec[kinds[0]]
    when = spec.get("when", {})
    if not isinstance(when, dict):
        raise _bad(path, f"{where}.when", "expected a mapping of parameter -> value or list of values")
    when = {k: v if isinstance(v, list) else [v] for k, v in when.items()}
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise _bad(path, where, "choice needs a non-empty list of values")
        if any(isinstance(v, dict | list) for v in value):
            raise _bad(path, where, "choice values must be scalars (numbers, strings, booleans, null)")
        return Param(key, kind, choices=value, when=when)
    if isinstance(value, list):  # YAML 1.1 (PyYAML) reads 1e-06 as a string; Helm and YAML 1.2 write it so
        value = [_number(v) for v in value]
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise _bad(path, where, f"{kind} needs [low, high] numbers, got {value!r}")
    low, high = value
    if not low < high:
        raise _bad(path, where, f"low {low} must be below high {high}")
    if kind == "log_uniform" and low <= 0:
        raise _bad(path, where, f"log_uniform needs low > 0, got {low}")
    step = spec.get("step", 1)
    use_log = bool(spec.get("log", False))
    if kind == "int":
        if not (isinstance(low, int) and isinstance(high, int)) or not isinstance(step, int) or step < 1:
            raise _bad(path, where, "int needs integer [low, high] and an integer step >= 1")
        if use_log and low < 1:
            raise _bad(path, where, "int with log: true needs low >= 1")
    return Param(key, kind, low=low, high=high, step=step, log=use_log or kind == "log_uniform", when=when)


def _number(value: Any) -> Any:
    """A numeric string such as '1e-06' as a float; anything else unchanged."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_space(path: str | Path, base: dict[str, Any]) -> Space:
    """Read and check a space file against the base config; any problem is one line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {str(path)!r} not found (example: configs/planets-space.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{path}: is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with metric, direction and parameters")
    allowed = ("metric", "direction", "parameters", "seed", "pruning", "trial_set")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise _bad(path, unknown[0], f"unknown key (allowed: {', '.join(allowed)})")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.startswith("val_"):
        raise _bad(path, "metric", f"expected a validation metric named val_<eval record key>, e.g. val_loss; "
                   f"got {metric!r} (the test split is never tuned on)")
    direction = raw.get("direction")
    if direction not in ("minimize", "maximize"):
        raise _bad(path, "direction", f"expected minimize or maximize, got {direction!r}")
    specs = raw.get("parameters")
    if not isinstance(specs, dict) or not specs:
        raise _bad(path, "parameters", "expected a non-empty mapping of config key -> distribution")
    params = [_parse_param(path, str(k), v) for k, v in specs.items()]
    seen: set[str] = set()
    for p in params:
        for cond in p.when:
            if cond not in seen:
                raise _bad(path, f"parameters.{p.key}.when", f"{cond!r} must be a parameter listed before it")
        seen.add(p.key)
    pruning = raw.get("pruning", {}) or {}
    if not isinstance(pruning, dict) or set(pruning) - {"startup_trials", "warmup_steps"}:
        raise _bad(path, "pruning", "expected a mapping with startup_trials and/or warmup_steps")
    seed = raw.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise _bad(path, "seed", f"expected an integer, got {seed!r}")
    trial_set = raw.get("trial_set", {}) or {}
    if not isinstance(trial_set, dict) or any(isinstance(v, dict | list) for v in trial_set.values()):
        raise _bad(path, "trial_set", "expected a mapping of config key -> scalar value")
    if searched := sorted(set(trial_set) & {p.key for p in params}):
        raise _bad(path, f"trial_set.{searched[0]}", "is also a searched parameter")
    try:
        validate_raw(apply_params(base, trial_set))
    except ConfigError as exc:
        raise _bad(path, "trial_set", f"not a valid config setting ({exc})") from None
    space = Space(path, metric, direction, params, seed, int(pruning.get("startup_trials", 2)),
                  int(pruning.get("warmup_steps", 0)), {str(k): v for k, v in trial_set.items()})
    for p in params:  # each key must exist in the config and take the values of its distribution
        for value in p.probes():
            try:
                validate_raw(apply_params(base, {p.key: value}))
            except ConfigError as exc:
                raise _bad(path, f"parameters.{p.key}", f"not a valid config key or value {value!r} ({exc})") from None
    return space


def apply_params(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with each dotted key set to its value."""
    raw = copy.deepcopy(base)
    for key, value in values.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate_raw(raw: dict[str, Any]) -> Any:
    """RunConfig of a raw dict, with the component's model section checked too; one-line ConfigError."""
    from pydantic import ValidationError

    from trainer import components
    from trainer.config import RunConfig, validation_message

    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, "config")) from None
    components.get(cfg.component)(cfg)
    return cfg


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Sample the parameters whose conditions hold (conditions refer to parameters sampled before)."""
    values: dict[str, Any] = {}
    for p in space.params:
        if any(values.get(k, object()) not in allowed for k, allowed in p.when.items()):
            continue
        if p.kind == "choice":
            values[p.key] = trial.suggest_categorical(p.key, p.choices)
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=p.step, log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), log=p.log)
    return values


def _die_with_parent() -> None:
    """In the trial process: receive SIGKILL when the tune worker dies, so no orphan keeps training."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkerStopped(AstrobioError):
    """The tune worker got SIGTERM/SIGINT: its running trial was stopped and marked failed (exit 143)."""

    exit_code = 143


@dataclass
class TrialOutcome:
    state: str  # "complete" | "pruned" | "failed"
    value: float | None
    steps: int
    reason: str = ""


def read_evals(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete evaluation records appended to metrics.jsonl since byte `offset`, and the new offset."""
    if not path.is_file():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
    records = []
    for line in chunk[:end].splitlines():
        record = json.loads(line)
        if record.get("kind") == "eval":
            records.append(record)
    return records, offset + end


class Tuner:
    """One worker of a study: claims trials until the study has `trials` finished ones, runs each as a run."""

    def __init__(self, args: argparse.Namespace) -> None:
        from trainer.config import apply_overrides, load_config

        require("optuna", "tune")
        self.args = args
        cfg = load_config(args.config, args.set)  # the base config must be valid on its own
        self.base = apply_overrides(yaml.safe_load(Path(args.config).read_text()), list(args.set))
        self.space = load_space(args.space, self.base)
        self.study_name = args.study or f"{cfg.run_name}-tune"
        if "://" in cfg.logging.run_dir:
            raise ConfigError(f"logging.run_dir {cfg.logging.run_dir!r}: tune keeps its study and trial folders on a "
                              f"local disk; use a local run_dir")
        self.dir = Path(cfg.logging.run_dir) / self.study_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = (args.storage or os.environ.get(STORAGE_ENV)
                            or f"sqlite:///{(self.dir / 'optuna.db').resolve()}")
        self.eval_every, self.max_steps = cfg.train.eval_every, cfg.train.max_steps
        self.base_run_dir = cfg.logging.run_dir
        self._proc: subprocess.Popen | None = None
        self._stop_requested = False

    # -- study ----------------------------------------------------------------------------------
    def study(self) -> Any:
        import optuna

        hb = max(1, int(self.args.heartbeat))
        kwargs: dict[str, Any] = {}
        if self.storage_url.startswith("sqlite"):
            kwargs = {"connect_args": {"timeout": 120}}  # several workers wait for SQLite's write lock
        for attempt in range(STORAGE_ATTEMPTS):
            try:
                storage = optuna.storages.RDBStorage(self.storage_url, engine_kwargs=kwargs,
                                                     heartbeat_interval=hb, grace_period=3 * hb)
                break
            except Exception as exc:  # sqlalchemy raises its own hierarchy; one line names the URL
                # Workers starting together on an empty database race to create the tables (SQLite: an
                # IntegrityError; PostgreSQL: DuplicateTable, "relation ... already exists"): try again.
                racing = "IntegrityError" in type(exc).__name__ or "already exists" in str(exc)
                if attempt + 1 == STORAGE_ATTEMPTS or not racing:
                    raise ConfigError(f"--storage {_redact(self.storage_url)}: cannot open ({type(exc).__name__}"
                                      f": {str(exc).splitlines()[0]})") from None
                time.sleep(0.5 * (attempt + 1))
        space = self.space
        sampler = optuna.samplers.TPESampler(seed=space.seed)
        return optuna.create_study(study_name=self.study_name, storage=storage, sampler=sampler,
                                   pruner=self.pruner(), direction=space.direction, load_if_exists=True)

    def pruner(self) -> Any:
        import optuna

        if self.args.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.space.startup_trials,
                                               n_warmup_steps=self.space.warmup_steps)
        if self.args.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.eval_every, max_resource=self.max_steps)
        return optuna.pruners.NopPruner()

    def run(self) -> int:
        import optuna
        from optuna.storages import fail_stale_trials
        from optuna.storages._heartbeat import get_heartbeat_thread
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        study = self.study()
        if self.args.params:
            study.enqueue_trial(_parse_params(self.args.params, self.space), skip_if_exists=True)
        target, failures = self.args.trials, 0
        finished = (TrialState.COMPLETE, TrialState.PRUNED)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self._stop_requested:
                fail_stale_trials(study)
                trials = study.get_trials(deepcopy=False)
                done = sum(t.state in finished for t in trials)
                running = sum(t.state == TrialState.RUNNING for t in trials)
                if done >= target:
                    break
                if done + running >= target:  # the rest is claimed: wait for it to finish or go stale
                    time.sleep(self.args.poll)
                    continue
                trial = study.ask()
                claimed = [t for t in study.get_trials(deepcopy=False, states=(*finished, TrialState.RUNNING))
                           if t.number < trial.number]
                if len(claimed) >= target:  # another worker claimed the last trial at the same moment
                    trial.set_user_attr("not_run", "the --trials budget was claimed by other workers")
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                with get_heartbeat_thread(trial._trial_id, study._storage):
                    outcome = self.run_trial(trial)
                trial.set_user_attr("steps", outcome.steps)
                if outcome.reason:
                    trial.set_user_attr("reason", outcome.reason)
                if outcome.state == "complete":
                    study.tell(trial, outcome.value)
                    failures = 0
                elif outcome.state == "pruned":
                    study.tell(trial, state=TrialState.PRUNED)
                    failures = 0
                else:
                    study.tell(trial, state=TrialState.FAIL)
                    failures += 1
                    log.warning("trial %d failed: %s", trial.number, outcome.reason)
                    if failures >= TRIAL_FAILURES_IN_A_ROW and not self._stop_requested:
                        raise AstrobioError(f"{failures} trials in a row failed, the last: {outcome.reason}; "
                                            f"see {self.trial_dir(trial.number) / 'trial.log'}")
                print(f"trial {trial.number} {outcome.state}: {self.space.metric} "
                      f"{_fmt(outcome.value)} after {outcome.steps} steps", flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._stop_requested:
            raise WorkerStopped("stopped by a signal; the running trial was marked failed and rerunning resumes")
        report = write_tune_report(study, self)
        print(f"tune report: {report}")
        print(f"best config: {self.dir / 'best-config.yaml'}")
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_requested = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    # -- one trial ------------------------------------------------------------------------------
    def trial_dir(self, number: int) -> Path:
        return self.dir / f"trial-{number:04d}"

    def trial_config(self, values: dict[str, Any], run_dir: str, run_name: str, keep_port: bool) -> dict[str, Any]:
        raw = apply_params(self.base, values)
        logging_section = raw.setdefault("logging", {})
        logging_section["run_dir"] = run_dir
        logging_section["run_name"] = run_name
        if not keep_port:  # parallel trials on one host would fight over one port: off unless asked for
            logging_section["metrics_port"] = self.args.metrics_port or 0
        return raw

    def run_trial(self, trial: Any) -> TrialOutcome:
        values = suggest(trial, self.space)
        raw = self.trial_config({**self.space.trial_set, **values}, str(self.dir.resolve()),
                                self.trial_dir(trial.number).name, False)
        try:
            validate_raw(raw)
        except ConfigError as exc:  # e.g. a combination the config refuses: this point is infeasible
            return TrialOutcome("failed", None, 0, str(exc))
        run = self.trial_dir(trial.number)
        run.mkdir(parents=True, exist_ok=True)
        config_path = run / "trial-config.yaml"
        write_local_atomic(config_path, yaml.safe_dump(raw, sort_keys=False).encode())
        trial.set_user_attr("run_dir", str(run))
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))
        cmd = [sys.executable, "-m", "trainer.cli", "run", "-c", str(config_path)]
        if self.args.nproc_per_node:
            cmd += ["--nproc-per-node", str(self.args.nproc_per_node)]
        metrics, offset, best, steps, pruned = run / "metrics.jsonl", 0, None, 0, False
        better = min if self.space.direction == "minimize" else max
        with open(run / "trial.log", "ab") as out:
            self._proc = proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                 preexec_fn=_die_with_parent)
            try:
                while True:
                    alive = proc.poll() is None
                    records, offset = read_evals(metrics, offset)
                    for record in records:
                        value = record.get(self.space.record_key)
                        if value is None:
                            proc.kill()
                            proc.wait()
                            return TrialOutcome("failed", None, steps, f"evaluation records have no "
                                                f"{self.space.record_key!r} (keys: {sorted(record)})")
                        steps = int(record["step"])
                        print(f"{self.space.metric}={value:.6g}", flush=True)  # Katib's StdOut collector
                        if not math.isfinite(value):
                            continue
                        best = value if best is None else better(best, value)
                        trial.report(value, steps)
                        if not pruned and trial.should_prune():
                            pruned = True
                            proc.send_signal(signal.SIGTERM)  # the loop checkpoints and exits 143
                    if not alive:
                        break
                    time.sleep(0.1)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                self._proc = None
        if pruned:
            return TrialOutcome("pruned", best, steps, f"pruned at step {steps}")
        if self._stop_requested:
            return TrialOutcome("failed", best, steps, "the tune worker was stopped")
        if proc.returncode != 0:
            return TrialOutcome("failed", best, steps, f"exit {proc.returncode}: {_last_error(run / 'trial.log')}")
        if best is None:
            return TrialOutcome("failed", None, steps, f"no finite {self.space.metric} was recorded")
        return TrialOutcome("complete", best, steps)


def _parse_params(items: list[str], space: Space) -> dict[str, Any]:
    known = {p.key for p in space.params}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"--params {item!r}: expected KEY=VALUE with a key of {space.path} "
                              f"({', '.join(sorted(known))})")
        values[key] = yaml.safe_load(value)
    return values


def _redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: show only the scheme
        return url.split(":", 1)[0] + ":..."


def _last_error(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][-300:]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def _dropped(count: int) -> str:
    if not count:
        return ""
    return (f" ({count} trial number(s) asked for by a worker when the last trial had just been claimed by "
            f"another were closed as failed without a run and are not listed)")


def _save_figure(ax: Any, path: Path) -> None:
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def write_tune_report(study: Any, tuner: Tuner) -> Path:
    """tune-report.md, best-config.yaml and the two figures in the study folder; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.trial import TrialState

    space, out = tuner.space, tuner.dir
    everything = study.get_trials(deepcopy=False)
    trials = [t for t in everything if "not_run" not in t.user_attrs]  # claims dropped at the budget: no run
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise AstrobioError(f"study {tuner.study_name} has no complete trial; see the trial.log files in {out}")
    best = study.best_trial
    best_values = {p.key: best.params[p.key] for p in space.params if p.key in best.params}
    best_raw = tuner.trial_config(best_values, tuner.base_run_dir, f"{tuner.study_name}-best", True)
    write_local_atomic(out / "best-config.yaml", yaml.safe_dump(best_raw, sort_keys=False).encode())
    lines = [f"# Tune report: study {tuner.study_name}", "",
             f"Objective: {space.metric} ({space.direction}), the best evaluation of each trial on the "
             f"validation split (the test split is never used here). Search space: `{space.path}`. Storage: "
             f"`{_redact(tuner.storage_url)}`. Trials: {len(complete)} complete, "
             f"{sum(t.state == TrialState.PRUNED for t in trials)} pruned, "
             f"{sum(t.state == TrialState.FAIL for t in trials)} failed, "
             f"{sum(t.state == TrialState.RUNNING for t in trials)} running"
             f"{_dropped(len(everything) - len(trials))}.", "",
             *([f"Each trial also ran with {', '.join(f'`{k}={v}`' for k, v in space.trial_set.items())} "
                "(the space file's trial_set); best-config.yaml does not.", ""] if space.trial_set else []),
             "## Best trial", "",
             f"Trial {best.number}: {space.metric} = {best.value:.6g} after {best.user_attrs.get('steps', '?')} "
             f"steps; run folder `{best.user_attrs.get('run_dir', '?')}` (bundle in `best/`, report.md).", "",
             "Parameters:", ""]
    lines += [f"- `{k}` = {v!r}" for k, v in best_values.items()]
    lines += ["", "Its config, ready to train (`best-config.yaml`):", "",
              f"    astrobio-train run -c {out / 'best-config.yaml'}", "", "```yaml",
              yaml.safe_dump(best_raw, sort_keys=False).rstrip(), "```", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the matplotlib plots are marked experimental
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
        _save_figure(ax, out / "optimization-history.png")
        lines += ["## Optimisation history", "", "![optimisation history](optimization-history.png)", ""]
        lines += ["## Parameter importances", ""]
        try:
            importances = optuna.importance.get_param_importances(study)
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
            _save_figure(ax, out / "param-importances.png")
            lines += ["fANOVA importances over the complete trials (parameters present in all of them):", ""]
            lines += [f"- `{k}`: {v:.3f}" for k, v in importances.items()]
            lines += ["", "![parameter importances](param-importances.png)", ""]
        except (ValueError, RuntimeError) as exc:
            lines += [f"Not computed: {exc}", ""]
    keys = [p.key for p in space.params]
    lines += ["## All trials", "", "| trial | state | " + space.metric + " | steps | "
              + " | ".join(f"`{k}`" for k in keys) + " | note |",
              "|" + "---|" * (len(keys) + 5)]
    for t in trials:
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        note = t.user_attrs.get("reason", "")
        cells = [str(t.number), t.state.name.lower(), _fmt(value), str(t.user_attrs.get("steps", "")),
                 *(repr(t.params[k]) if k in t.params else "" for k in keys), note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    path = out / "tune-report.md"
    write_local_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="hyperparameter search (Optuna): each trial a normal run, pruned on its evaluations",
        description="Search the keys of a space file; each trial is `astrobio-train run` in "
        "<logging.run_dir>/<study>/trial-NNNN. Several workers on one --storage share the study; rerunning "
        "resumes it until --trials trials are finished (complete or pruned).")
    p.add_argument("-c", "--config", required=True, help="base run config YAML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a base config value (repeatable)")
    p.add_argument("--space", required=True, help="search space YAML (see configs/planets-space.yaml)")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should have")
    p.add_argument("--storage", default=None,
                   help=f"Optuna RDB URL (postgresql://..., sqlite:///...); default ${STORAGE_ENV}, else SQLite in the "
                   "study folder")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus port of each trial run (default off: workers may share a host)")
    p.add_argument("--study", default=None, help="study name (default: <run_name>-tune)")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="pruning on intermediate evaluations")
    p.add_argument("--params", action="append", default=[], metavar="KEY=VALUE",
                   help="run the next trial with these values (e.g. Katib trial parameters), repeatable")
    p.add_argument("--nproc-per-node", default=None, help="worker processes of each trial run")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between trial heartbeats; a trial silent for 3 beats is marked failed")
    p.add_argument("--poll", type=float, default=2.0, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    if args.trials < 1:
        raise ConfigError(f"--trials {args.trials}: expected at least 1")
    return Tuner(args).run()
