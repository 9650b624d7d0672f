"""Chaos benchmark: kill -9 a `planets` run at seeded random moments, resume it after each kill, count what survived.

Each cycle starts the run, waits for a moment drawn from a seeded random generator and sends SIGKILL:
- `during-write`: after 1-2 new checkpoints, as soon as the next checkpoint's `.tmp-` folder appears;
- `after-write`: as soon as the 1st or 2nd new checkpoint folder has been renamed into place;
- `between`: a random delay (0-150 ms) after the 1st or 2nd new checkpoint;
- `startup`: a random delay (0-3 s) after the start, usually before any new checkpoint.
A kill counts as during a write when a `.tmp-` folder is still there after it. By default each start is a fork of
this process, which has imported the trainer once (a start then costs the data and model set-up, not the ~5-15 s
of imports); `--start exec` runs a fresh `astrobio-train` process each time instead.

`python -m bench.chaos` (the benchmark): publishes the bundled exoplanet snapshot to a temporary root, trains the
uninterrupted reference, runs the kill cycles, resumes the run to its end in a fresh process and prints one JSON
line: kills, resumes, kills during a checkpoint write, and the mismatches (losses that differ from the
reference, steps missing or repeated in metrics.jsonl, temp files left, checkpoints that do not verify).

`python -m bench.chaos --run RUN [--kills N --seed S] -- run -c CONFIG --set ...` runs only the kill cycles on
the given `astrobio-train` arguments (tests/trainer/test_chaos.py) and prints the tally as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODES = ("during-write", "after-write", "between", "startup")
WEIGHTS = (0.35, 0.25, 0.3, 0.1)
# A short planets run: small ensemble, a checkpoint every 5 steps, no report re-trainings.
SETTINGS = ("model.members=2", "model.protocol_evaluation=false", "checkpoint.every_steps=5", "train.eval_every=25",
            "train.log_every=50", "train.early_stopping_patience=null")


@dataclass
class Tally:
    kills: int = 0
    starts: int = 0
    resumes: int = 0  # starts that logged "resumed from step"
    kills_during_write: int = 0  # a `.tmp-` folder was left by the kill
    finished_before_kill: bool = False  # the run reached max_steps before all kills were done
    modes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def complete_steps(run: Path) -> set[int]:
    """Steps of the checkpoint folders that have their manifest (written last, before the rename)."""
    try:
        entries = list(os.scandir(run / "checkpoints"))
    except FileNotFoundError:
        return set()
    return {int(e.name.split("-")[1]) for e in entries
            if e.name.startswith("step-") and os.path.exists(os.path.join(e.path, "manifest.json"))}


def temp_folders(run: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(run / "checkpoints") if e.name.startswith(".tmp-")]
    except FileNotFoundError:
        return []


def leftovers(run: Path) -> list[str]:
    """Temp files and folders anywhere in the run folder (none may remain once a run has ended)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if p.name.startswith((".tmp-", ".old-")) or p.name.endswith(".tmp") or ".stale-" in p.name)


class Child:
    """One start of the run: a fork of this process (trainer already imported) or a fresh CLI process."""

    def __init__(self, argv: list[str], log: Path, start: str) -> None:
        self.started = time.monotonic()
        self.code: int | None = None
        if start == "exec":
            with open(log, "wb") as out:
                self.proc = subprocess.Popen([str(BIN / "astrobio-train"), *argv], stdout=out, stderr=out,
                                             start_new_session=True, env=child_env())
            self.pid = self.proc.pid
            return
        self.proc = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: its own process group, output to the log, exit with the CLI's code
            code = 1
            try:
                os.setpgid(0, 0)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                from trainer import cli

                code = cli.main(argv)
            except BaseException:  # reported in the log: the child must never return into the parent's code
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        with contextlib.suppress(PermissionError, ProcessLookupError):  # the child did it already, or ended
            os.setpgid(pid, pid)  # also here, so a kill right after the fork reaches its group
        self.pid = pid

    def poll(self) -> int | None:
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def kill(self) -> None:
        """SIGKILL the child's whole process group, then reap it (so its lease reads as dead)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.code = self.proc.wait()
        elif self.code is None:
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def preload() -> None:
    """Import what a planets run imports, once, so forked starts skip it; touch no tensor or thread pool."""
    import pandas  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import scipy.spatial  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim imports it when the first optimizer is built)

    from trainer import cli, components, run  # noqa: F401

    cli.build_parser()
    components.get("planets")


def wait_until(predicate, child: Child, timeout: float, poll: float = 0.0005) -> bool:
    """True once predicate() holds; False when the child ended first. Raises on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if child.poll() is not None:
            return False
        time.sleep(poll)
    raise TimeoutError(f"no kill moment within {timeout:.0f} s (pid {child.pid})")


def kill_cycles(argv: list[str], run: Path, kills: int, seed: int, start: str, logs: Path,
                timeout: float = 300) -> Tally:
    """Start, kill at a drawn moment, repeat until `kills` kills (or the run finished on its own)."""
    if start == "fork":
        os.environ.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        preload()
    rng = random.Random(seed)
    tally, modes = Tally(), Counter()
    began = time.monotonic()
    logs.mkdir(parents=True, exist_ok=True)
    while tally.kills < kills:
        mode = rng.choices(MODES, WEIGHTS)[0]
        new_needed = rng.randint(1, 2)
        delay = rng.uniform(0, 3.0) if mode == "startup" else rng.uniform(0, 0.15)
        base = max(complete_steps(run), default=0)
        seen: set[int] = set()

        def new_checkpoints(base: int = base, seen: set[int] = seen, needed: int = new_needed) -> bool:
            seen.update(s for s in complete_steps(run) if s > base)
            return len(seen) >= needed

        log = logs / f"start-{tally.starts:03d}.log"
        child = Child(argv, log, start)
        tally.starts += 1
        try:
            if mode == "startup":
                alive = wait_until(lambda c=child, d=delay: time.monotonic() - c.started > d, child, timeout, 0.005)
            else:
                alive = wait_until(new_checkpoints, child, timeout)
                if alive and mode == "during-write":
                    alive = wait_until(lambda: bool(temp_folders(run)), child, timeout)
                elif alive and mode == "between":
                    until = time.monotonic() + delay
                    alive = wait_until(lambda t=until: time.monotonic() > t, child, timeout, 0.002)
        except BaseException:
            child.kill()
            raise
        if alive:
            child.kill()
            tally.kills += 1
            modes[mode] += 1
            tally.kills_during_write += bool(temp_folders(run))
        text = log.read_text(errors="replace")
        tally.resumes += "resumed from step" in text
        if not alive:
            if child.code == 0:
                tally.finished_before_kill = True
                break
            raise RuntimeError(f"start {tally.starts} exited {child.code} before its kill ({mode}):\n{text[-3000:]}")
    tally.modes = dict(modes)
    tally.seconds = time.monotonic() - began
    return tally


def train_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "astrobio-train"), *argv], capture_output=True, text=True, env=child_env())


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{os.cpu_count()} CPUs ({model}), load average {os.getloadavg()[0]:.1f} at the end"


def benchmark(kills: int, seed: int, start: str, max_steps: int, keep: Path | None) -> dict:
    """Reference run, kill cycles, final resume, comparison; the figures as one dict."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="chaos-"))
    data = work / "data"
    if not data.exists():
        subprocess.run([str(BIN / "astrobio-data"), "run", "exoplanet-catalogue", "--from-snapshot", "--root",
                        str(data)], check=True, capture_output=True, env=child_env())

    def argv(run_dir: Path) -> list[str]:
        sets = [f"data.root={data}", f"logging.run_dir={run_dir}", *SETTINGS, f"train.max_steps={max_steps}"]
        return ["run", "-c", str(REPO / "configs" / "planets.yaml"), *(x for s in sets for x in ("--set", s))]

    started = time.monotonic()
    reference = run_cli(argv(work / "reference"))
    if reference.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{reference.stderr[-3000:]}")
    run = work / "chaos" / "planets"
    tally = kill_cycles(argv(work / "chaos"), run, kills, seed, start, work / "logs")
    final = run_cli(argv(work / "chaos"))
    expected = {r["step"]: r["loss"] for r in train_records(work / "reference" / "planets")}
    records = train_records(run) if final.returncode == 0 else []
    steps = Counter(r["step"] for r in records)
    verify = run_cli(["checkpoints", "verify", str(run)])
    return {
        "benchmark": "chaos",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "start": start,
        "seed": seed,
        "max_steps": max_steps,
        **{k: v for k, v in asdict(tally).items() if k != "seconds"},
        "final_exit_code": final.returncode,
        "final_resumed": "resumed from step" in final.stderr,
        "loss_mismatches": sum(1 for r in records if expected.get(r["step"]) != r["loss"]),
        "missing_steps": sorted(set(expected) - set(steps)),
        "repeated_steps": sorted(s for s, n in steps.items() if n > 1),
        "temp_left": leftovers(run),
        "verify_exit_code": verify.returncode,
        "kill_cycles_seconds": round(tally.seconds, 1),
        "seconds_per_kill": round(tally.seconds / max(tally.kills, 1), 2),
        "wall_seconds": round(time.monotonic() - started, 1),
        "work": str(work) if keep else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", choices=("fork", "exec"), default="fork")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="steps of the benchmark run (default: 12 per kill, at least 200)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    parser.add_argument("--run", type=Path, default=None, help="with `-- ARGS`: the run folder the arguments write")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- astrobio-train arguments: only the kill cycles")
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if argv:
        if args.run is None:
            parser.error("--run RUN is required with astrobio-train arguments")
        logs = args.run.parent / f"chaos-logs-{args.seed}"
        print(json.dumps(asdict(kill_cycles(argv, args.run, args.kills, args.seed, args.start, logs))))
        return
    max_steps = args.max_steps or max(200, 12 * args.kills)
    print(json.dumps(benchmark(args.kills, args.seed, args.start, max_steps, args.keep)))


if __name__ == "__main__":
    main()
