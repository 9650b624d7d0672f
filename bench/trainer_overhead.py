"""Per-step overhead of our training loop against a bare PyTorch loop: same model, data, steps, alternating.

Both loops train the `planets` component (its real data, its model) with the same sampler, bf16 autocast,
clipping, AdamW and schedule. Ours adds everything else it does per step (telemetry, NaN guard, metrics.jsonl,
Prometheus); evaluation and checkpoints are pushed past the end so both do the same work. Step time is the
median gap between consecutive steps. Each round runs bare, ours, bare again: the ratio of the two bare runs
is the machine's noise floor, printed beside ours. One thread per process. Prints one JSON line; run it
through `make bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from datajobs.store import Store
from trainer import components
from trainer.config import load_config
from trainer.data.sampler import ResumableBatchSampler
from trainer.distributed import DistEnv
from trainer.loop import Trainer, autocast, seed_everything
from trainer.optim import build_optimizer, build_scheduler

REPO = Path(__file__).resolve().parents[1]


def bare_loop(cfg, data_root: str, steps: int) -> list[float]:
    """The textbook loop: sampler, autocast, the component's loss, backward, clip, step; returns step end times."""
    seed_everything(cfg.train.seed)
    component = components.get(cfg.component)(cfg)
    data = component.build_data(Store(data_root))
    model = component.build_model(data)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.train.max_steps)
    sampler = ResumableBatchSampler(len(data.train), cfg.data.batch_size, seed=cfg.train.seed)
    loader = iter(torch.utils.data.DataLoader(data.train, batch_sampler=sampler))
    device = torch.device("cpu")
    ends = []
    for _ in range(steps):
        batch = next(loader)
        with autocast(cfg, device):
            loss = component.training_step(model, batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        ends.append(time.perf_counter())
    return ends


def our_loop(cfg, data_root: str, steps: int, run_root: Path) -> list[float]:
    """Our Trainer on the same config; step end times from metrics.jsonl."""
    cfg = cfg.model_copy(deep=True)
    cfg.logging.run_dir = str(run_root)
    run_dir = run_root / cfg.run_name
    run_dir.mkdir(parents=True)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    component = components.get(cfg.component)(cfg)
    Trainer(cfg, component, Store(data_root), run_dir, env).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["time"] for r in records if r["kind"] == "train"][:steps]


def gaps(ends: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:], strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "planets.yaml"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. model.hidden=512")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        data_root = f"{tmp}/data"
        subprocess.run([str(Path(sys.executable).parent / "astrobio-data"), "run", "exoplanet-catalogue",
                        "--from-snapshot", "--root", data_root], check=True, capture_output=True)
        cfg = load_config(args.config, [
            f"train.max_steps={args.steps}", f"train.eval_every={args.steps * 10}",
            f"checkpoint.every_steps={args.steps * 10}", "checkpoint.save_best=false",
            "train.early_stopping_patience=null", f"train.log_every={args.steps}", "logging.console=false",
            *args.set,
        ])
        ours, bare, control = [], [], []
        for i in range(args.rounds):  # alternate so drift in machine load hits all three equally
            bare += gaps(bare_loop(cfg, data_root, args.steps), args.warmup)
            ours += gaps(our_loop(cfg, data_root, args.steps, Path(tmp) / f"runs{i}"), args.warmup)
            control += gaps(bare_loop(cfg, data_root, args.steps), args.warmup)
    result = {
        "benchmark": "trainer_overhead",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "config": Path(args.config).name,
        "overrides": args.set,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "bare_median_step_ms": statistics.median(bare) * 1e3,
        "ours_median_step_ms": statistics.median(ours) * 1e3,
        "ratio": statistics.median(ours) / statistics.median(bare),
        "bare_vs_bare_ratio": statistics.median(control) / statistics.median(bare),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
