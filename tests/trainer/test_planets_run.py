"""End-to-end planets runs through the CLI: resume after kill -9, SIGTERM, NaN, metrics, bad data (learning and the
report: test_planets_model.py)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import (
    checkpoint_steps,
    cli_env,
    free_port,
    planets_args,
    require_tool,
    run_cli,
    train_losses,
    wait_for,
)

# Long enough to be killed half-way, fast enough for CI: no early stopping, frequent checkpoints. With the
# config's dropout: its masks come from the global torch RNG, which a DataLoader built without its own generator
# would also draw from at each evaluation and at resume, so this comparison fails if a loader shifts that stream.
RESUME_SETTINGS = ("train.max_steps=600", "train.early_stopping_patience=null", "checkpoint.every_steps=100",
                   "checkpoint.keep_last=10", "train.eval_every=100", "model.hidden=256",
                   "model.protocol_evaluation=false")


def test_kill_9_then_resume_matches_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    reference = run_cli(planets_args(data_root, tmp_path / "ref", *RESUME_SETTINGS))
    assert reference.returncode == 0, reference.stderr
    expected = train_losses(tmp_path / "ref" / "planets")
    assert len(expected) == 600

    run = tmp_path / "killed" / "planets"
    proc = subprocess.Popen(planets_args(data_root, tmp_path / "killed", *RESUME_SETTINGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    wait_for(lambda: 200 in checkpoint_steps(run), 120, "the step-200 checkpoint", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = max(train_losses(run))
    assert killed_at < 600, "the run finished before it was killed"

    resumed = run_cli(planets_args(data_root, tmp_path / "killed", *RESUME_SETTINGS))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr
    got = train_losses(run)
    assert sorted(got) == sorted(expected)
    mismatched = [s for s in expected if got[s] != expected[s]]
    assert not mismatched, f"steps {mismatched[:5]} differ after resume"


def test_sigterm_checkpoints_and_exits_143_with_metrics_served(data_root: Path, tmp_path: Path) -> None:
    port = free_port()
    run = tmp_path / "planets"
    proc = subprocess.Popen(
        planets_args(data_root, tmp_path, "train.max_steps=1000000", "train.early_stopping_patience=null",
                     "checkpoint.every_steps=100000", "train.eval_every=20", "train.log_every=10",
                     f"logging.metrics_port={port}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        def scrape() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return response.read().decode()
            except OSError:
                return ""

        wait_for(lambda: re.search(r"^astrobio_eval_loss\{", scrape(), re.M) is not None, 120,
                 "a scrape after the first evaluation", proc)
        exposition = scrape()
        contract = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"
        # GPU gauges need CUDA; tokens/s and MFU belong to token models with known FLOPs and peak.
        conditional = r"(?!gpu_|tokens_per_second|mfu_ratio)"
        names = re.findall(rf"^\| `(astrobio_{conditional}\w+)` \| \w+ \|", contract.read_text(), re.M)
        assert len(names) == 15
        for name in names:
            assert re.search(rf"^{name}(_total|_bucket|_sum|_count)?\{{", exposition, re.M), f"{name} not exported"
        promtool = require_tool("promtool")
        lint = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    last_step = max(train_losses(run))
    assert checkpoint_steps(run) == [last_step]
    state = json.loads((run / "checkpoints" / f"step-{last_step:08d}" / "trainer_state.json").read_text())
    assert state["step"] == last_step
    assert "preempted at step" in err


def test_nan_exits_3_without_poisoned_checkpoint(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(planets_args(data_root, tmp_path, "train.max_steps=400", "checkpoint.every_steps=50",
                                  "checkpoint.keep_last=10", "train.early_stopping_patience=null",
                                  "train.inject_nan_at_step=130"))
    assert result.returncode == 3, result.stderr
    run = tmp_path / "planets"
    assert checkpoint_steps(run) == [50, 100]
    assert max(train_losses(run)) == 129
    assert "non-finite loss at step 130" in result.stderr.splitlines()[-1]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "nonfinite"] == [130]


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "no_manifest", "no_dataset"])
def test_bad_data_stops_with_one_line_exit_2(data_root: Path, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    base = root / "datasets" / "exoplanet-catalogue"
    version = base / (base / "LATEST").read_text().strip()
    shard = version / "planets.parquet"
    if damage == "corrupt":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "no_manifest":
        (version / "manifest.json").unlink()
    else:
        shutil.rmtree(base)
    result = run_cli(planets_args(root, tmp_path / "runs"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "astrobio-data run exoplanet-catalogue" in lines[0]
    if damage in ("corrupt", "truncate"):
        assert "planets.parquet" in lines[0]


def test_nasa_snapshot_without_mass_provenance_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    subprocess.run([str(Path(run_cli.__globals__["BIN"]) / "astrobio-data"), "run", "nasa-exoplanets",
                    "--from-snapshot", "--root", str(root)], check=True, capture_output=True, env=cli_env())
    result = run_cli(planets_args(root, tmp_path / "runs", "data.dataset=nasa-exoplanets"))
    assert result.returncode == 2
    assert "mass provenance unknown" in result.stderr


def test_tensorboard_and_wandb_offline_sinks(data_root: Path, tmp_path: Path) -> None:
    result = run_cli(planets_args(data_root, tmp_path, "train.max_steps=30", "train.eval_every=10",
                                  "logging.tensorboard=true", "logging.wandb=true",
                                  "model.protocol_evaluation=false", "model.dropout=0.0"),
                     WANDB_MODE="offline", WANDB_SILENT="true")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "planets"
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "eval/loss"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("train/loss")) == 30
    offline = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline and offline[0].stat().st_size > 0


def test_missing_extra_is_one_line_naming_it(data_root: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['torch.utils.tensorboard'] = None; from trainer.cli import main; "
            f"sys.exit(main({planets_args(data_root, tmp_path, 'logging.tensorboard=true')[1:]!r}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env())
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("install it with `pip install 'astrobio-train[tensorboard]'`"), result.stderr
    assert len(lines) == 1, result.stderr
