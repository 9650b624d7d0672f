"""Seconds a checkpoint blocks training, synchronous against `checkpoint.async_save`, side by side in one run.

A plain MLP (default ~33M parameters: ~400 MB of fp32 weights and AdamW state) trains through the real
`TorchEngine` and is saved through the real `Checkpointer` (DCP shards, fsync, sha256 manifest, rename) into a
folder on local disk. Each round saves `--saves` times with a few training steps between saves, once
synchronously and once in the background, alternating so drift in machine load hits both. Per save: blocked =
time the training thread spent in the save call (async: waiting for the previous save, then the copy to CPU
memory), write = start of the save until the folder was renamed into place; and the training steps of each mode
(in async rounds they share the CPU and the GIL with the background write). Inputs are random tensors: speed
only, no learning. Prints one JSON line; run it through `make bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from trainer.checkpoint import Checkpointer, TrainerState
from trainer.config import load_config
from trainer.distributed import DistEnv
from trainer.engine import TorchEngine

REPO = Path(__file__).resolve().parents[1]


def mlp(width: int, layers: int) -> nn.Module:
    blocks = [m for _ in range(layers) for m in (nn.Linear(width, width), nn.GELU())]
    return nn.Sequential(*blocks)


def train_step(engine: TorchEngine, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    loss = engine.model(batch).square().mean()
    engine.backward(loss, last=True)
    engine.grad_norm()
    engine.step()
    return time.perf_counter() - started


def one_round(engine: TorchEngine, ckpt: Checkpointer, background: bool, saves: int, steps_between: int,
              batch: torch.Tensor, step0: int) -> dict[str, list[float]]:
    """`saves` saves with `steps_between` training steps after each; the last save's write is waited for."""
    blocked, write, steps = [], [], []
    step = step0
    for _ in range(saves):
        step += 1
        started = time.perf_counter()
        finished = ckpt.wait()
        outcome = ckpt.save(engine, TrainerState(step=step), background=background)
        blocked.append(time.perf_counter() - started)
        for done in (finished, outcome):
            if done is not None:
                assert done.problem is None, done.problem
                write.append(done.write_seconds)
        for _ in range(steps_between):
            steps.append(train_step(engine, batch))
    finished = ckpt.wait()
    if finished is not None:
        write.append(finished.write_seconds)
    return {"blocked": blocked, "write": write, "steps": steps}


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--saves", type=int, default=3, help="saves per round")
    parser.add_argument("--steps-between", type=int, default=10, help="training steps after each save")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dir", default=None, help="where checkpoints go (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "planets.yaml", ["schedule.name=constant", "schedule.warmup_steps=0"])
    engine = TorchEngine(mlp(args.width, args.layers), cfg)
    batch = torch.randn(args.batch, args.width)
    train_step(engine, batch)  # AdamW state exists from here on: the saves carry weights and optimizer state
    state_bytes = sum(t.numel() * t.element_size() for t in engine.model.state_dict().values())
    state_bytes += sum(t.numel() * t.element_size() for s in engine.optimizer.state.values() for t in s.values()
                       if isinstance(t, torch.Tensor))
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    results: dict[str, dict[str, list[float]]] = {
        mode: {"blocked": [], "write": [], "steps": []} for mode in ("sync", "async")}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        checkpointers = {"sync": Checkpointer(Path(tmp) / "sync", env, keep_last=2, holder="bench"),
                         "async": Checkpointer(Path(tmp) / "async", env, keep_last=2, holder="bench", async_save=True)}
        step = 0
        for _ in range(args.rounds):
            for mode, ckpt in checkpointers.items():
                got = one_round(engine, ckpt, mode == "async", args.saves, args.steps_between, batch, step)
                step += args.saves
                for key, values in got.items():
                    results[mode][key] += values
        for ckpt in checkpointers.values():
            ckpt.close()
    out = {
        "benchmark": "checkpoint_async",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "torch": torch.__version__,
        "state_mb": round(state_bytes / 1e6, 1),
        "rounds": args.rounds, "saves_per_round": args.saves, "steps_between_saves": args.steps_between,
    }
    for mode, got in results.items():
        out[mode] = {
            "blocked_s": summary(got["blocked"]), "write_s": summary(got["write"]),
            "step_ms": summary([s * 1e3 for s in got["steps"]]),
            "blocked_per_save_s": [round(x, 3) for x in got["blocked"]],
            "write_per_save_s": [round(x, 3) for x in got["write"]],
        }
    out["blocked_ratio_async_over_sync"] = (out["async"]["blocked_s"]["median"] / out["sync"]["blocked_s"]["median"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
