"""DeepSpeed from our config: the generated JSON, and ZeRO-2/3 on CPU (2 gloo ranks) matching one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, free_port, require_module
from trainer.parallelize import ParallelSpec, deepspeed_config

STEPS = 4


def test_generated_config_carries_stage_offload_and_batch() -> None:
    spec = ParallelSpec("deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True)
    cfg = deepspeed_config(spec, micro_batch=2, grad_accum=16, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95),
                           eps=1e-8, grad_clip=1.0, bf16=True)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 16
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and cfg["gradient_clipping"] == 1.0
    assert cfg["optimizer"]["params"]["betas"] == [0.9, 0.95]
    stage2 = deepspeed_config(ParallelSpec("deepspeed", zero_stage=2), micro_batch=1, grad_accum=1, lr=1e-4,
                              weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0, bf16=False)
    assert "offload_optimizer" not in stage2["zero_optimization"]
    assert "stage3_max_live_parameters" not in stage2["zero_optimization"]


@pytest.mark.parametrize("stage", [2, 3])  # ZeRO-1 is ZeRO-2 without gradient partitioning
def test_zero_stage_on_two_cpu_ranks_matches_one_process(stage: int) -> None:
    require_module("deepspeed")
    from tests.llm.ds_worker import reference_losses

    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.llm.ds_worker", str(stage), str(STEPS)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                                          RANK=str(r), LOCAL_RANK=str(r), DS_ACCELERATOR="cpu"))
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
    losses = json.loads(outs[0][0].strip().splitlines()[-1])
    # fp32 on both sides; DeepSpeed averages the two half-batch gradients: 1e-4 relative per step
    assert losses == pytest.approx(reference_losses(STEPS), rel=1e-4), outs[1][1][-2000:]
