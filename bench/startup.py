"""Start-up cost: seconds from launching a process to the end of its first training step, ours vs a bare script.

Ours is `astrobio-train run` on the `planets` config (config parsing, the lease, telemetry, data, model,
engine, the first step); the first step's end is its `metrics.jsonl` record. The bare script imports torch,
loads the same published dataset through the same component and takes one optimizer step. Both are fresh
Python processes with one thread, alternating, medians over the rounds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE_SCRIPT = """
import sys, time
import torch
from datajobs.store import Store
from trainer import components
from trainer.config import load_config
torch.set_num_threads(1)
cfg = load_config(sys.argv[1], [])
component = components.get(cfg.component)(cfg)
data = component.build_data(Store(sys.argv[2]))
model = component.build_model(data)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=cfg.data.batch_size)))
component.training_step(model, batch).loss.backward()
optimizer.step()
print(time.time())
"""


def bare_seconds(config: str, data_root: str, env: dict[str, str]) -> float:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", BARE_SCRIPT, config, data_root], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1]) - start


def ours_seconds(config: str, data_root: str, run_root: Path, env: dict[str, str]) -> float:
    start = time.time()
    subprocess.run([str(BIN / "astrobio-train"), "run", "-c", config, "--set", f"logging.run_dir={run_root}",
                    "--set", f"data.root={data_root}", "--set", "train.max_steps=1",
                    "--set", "model.protocol_evaluation=false", "--set", "logging.console=false"],
                   env=env, check=True, capture_output=True)
    metrics = next(run_root.glob("*/metrics.jsonl"))
    first = next(r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "train")
    return first["time"] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "planets.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        data_root = f"{tmp}/data"
        subprocess.run([str(BIN / "astrobio-data"), "run", "exoplanet-catalogue", "--from-snapshot",
                        "--root", data_root], check=True, capture_output=True)
        bare, ours = [], []
        for i in range(args.rounds):
            bare.append(bare_seconds(args.config, data_root, env))
            ours.append(ours_seconds(args.config, data_root, Path(tmp) / f"runs{i}", env))
    result = {
        "benchmark": "startup",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "config": Path(args.config).name,
        "rounds": args.rounds,
        "bare_first_step_s": statistics.median(bare),
        "ours_first_step_s": statistics.median(ours),
        "overhead_s": statistics.median(o - b for o, b in zip(ours, bare, strict=True)),
        "bare_per_round_s": [round(b, 3) for b in bare],
        "ours_per_round_s": [round(o, 3) for o in ours],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
