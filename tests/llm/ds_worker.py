"""One DeepSpeed rank for tests (CPU, gloo): trains the tiny decoder and prints its losses as JSON on rank 0.

Usage: python -m tests.llm.ds_worker ZERO_STAGE STEPS (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.models.transformer import Transformer, TransformerArgs
from trainer.parallelize import ParallelSpec, apply_deepspeed, deepspeed_config

ARGS = TransformerArgs(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
GLOBAL_BATCH = 8
LR, BETAS, CLIP = 1e-3, (0.9, 0.95), 1.0


def batches(steps: int) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (steps, GLOBAL_BATCH, ARGS.max_seq_len + 1),
                         generator=torch.Generator().manual_seed(1))


def reference_losses(steps: int) -> list[float]:
    """The same training in one process with torch's AdamW on the whole global batch."""
    torch.manual_seed(0)
    model = Transformer(ARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
    losses = []
    for batch in batches(steps):
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def main(stage: int, steps: int) -> None:
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    micro = GLOBAL_BATCH // world
    torch.manual_seed(0)
    model = Transformer(ARGS)
    config = deepspeed_config(ParallelSpec("deepspeed", zero_stage=stage), micro_batch=micro, grad_accum=1, lr=LR,
                              weight_decay=0.0, betas=BETAS, eps=1e-8, grad_clip=CLIP, bf16=False, torch_adam=True,
                              overlap_comm=False)
    engine = apply_deepspeed(model, config)
    losses = []
    for batch in batches(steps):
        mine = batch[rank * micro : (rank + 1) * micro]
        loss = F.cross_entropy(engine(mine[:, :-1]).flatten(0, 1), mine[:, 1:].flatten())
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)
    if rank == 0:
        print(json.dumps(losses), flush=True)
    dist.barrier()
    # Leave without C++ teardown: DeepSpeed's gloo group occasionally aborts in a thread destructor at exit
    # ("terminate called without an active exception") after all the work is done.
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main(int(sys.argv[1]), int(sys.argv[2]))
