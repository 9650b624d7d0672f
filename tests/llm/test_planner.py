"""The memory planner: the 13B / 2 x 24 GiB figures of docs/memory.md, and measured CPU peaks within 10%."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from datajobs.errors import ConfigError
from tests.conftest import REPO
from trainer.cli import main
from trainer.config import load_config
from trainer.models.transformer import Transformer, TransformerArgs
from trainer.planner import GiB, Hardware, Strategy, Workload, plan, strategies, workload_from_config


def doc_rows() -> dict[str, tuple[float, float, bool]]:
    """strategy -> (per GPU GiB, per host GiB, fits) from the 13B table in docs/memory.md."""
    rows = {}
    for line in (REPO / "docs" / "memory.md").read_text().splitlines():
        m = re.fullmatch(r"\| ([a-z0-9+-]+) \| ([\d.]+) \| ([\d.]+) \| (fits|no) \|", line.strip())
        if m:
            rows[m[1]] = (float(m[2]), float(m[3]), m[4] == "fits")
    return rows


def test_13b_on_two_24gib_gpus_matches_the_hand_calculation() -> None:
    cfg = load_config(REPO / "configs" / "llm-13b.yaml")
    w = workload_from_config(cfg)
    assert w.args.num_params() == 13_147_013_376
    hw = Hardware(gpus=2, gpu_mem=24 * GiB, host_mem=256 * GiB)
    plans = {p.strategy.short: p for p in (plan(w, s, hw) for s in strategies(2))}
    rows = doc_rows()
    assert set(rows) == set(plans)
    for name, (gpu, host, fits) in rows.items():
        p = plans[name]
        assert round(p.gpu_total / GiB, 2) == gpu, name
        assert round(p.host_total / GiB, 2) == host, name
        assert p.fits is fits, name
    # the model state of mixed-precision AdamW alone is 16 bytes per parameter
    state = plans["fsdp-z3"].gpu
    model_state = (state["parameters"] + state["gradients"] + state["optimizer state"]) * 2
    assert model_state / GiB == pytest.approx(195.91, abs=0.01)


def test_plan_command_prints_the_verdicts_and_the_cheapest_fit(capsys: pytest.CaptureFixture) -> None:
    rc = main(["plan", "-c", str(REPO / "configs" / "llm-13b.yaml"), "--gpus", "2", "--gpu-mem", "24GiB",
               "--host-mem", "256GiB"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "cheapest that fits: deepspeed ZeRO-3 + offload opt" in out
    assert "fsdp (ZeRO-3): needs 112.9 GiB per GPU > 24.0 GiB" in out
    rc = main(["plan", "-c", str(REPO / "configs" / "llm-13b.yaml"), "--gpus", "2", "--gpu-mem", "24GiB",
               "--host-mem", "128GiB"])
    out = capsys.readouterr().out
    assert "nothing fits" in out and "QLoRA (model.finetune=qlora) fits one GPU" in out


def test_8bit_adamw_with_fsdp_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "llm-tiny.yaml", ["optim.name=adamw8bit", "distributed.strategy=fsdp"])
    assert "adamw8bit cannot run with distributed.strategy=fsdp" in str(err.value)
    assert "\n" not in str(err.value).strip()


def measured_cpu_peak(args: TransformerArgs, batch: int, seq: int) -> int:
    """Peak bytes MemTracker sees over two AdamW steps (fp32 params, bf16 autocast), the second one steady."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1))
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(tokens[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
                del logits
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tracker.reset_mod_stats()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize(("dim", "layers", "heads", "kv", "vocab", "batch", "seq"), [
    (256, 4, 4, 2, 4096, 4, 256),
    (128, 2, 4, 4, 8192, 8, 128),
    (384, 6, 6, 2, 2048, 2, 512),
])
def test_planner_within_10_percent_of_measured_cpu_peak(dim, layers, heads, kv, vocab, batch, seq) -> None:
    args = TransformerArgs(vocab, dim, layers, heads, kv, max_seq_len=seq)
    measured = measured_cpu_peak(args, batch, seq)
    planned = plan(Workload(args, seq, batch, device="cpu"), Strategy("none"), Hardware(1, 64 * GiB)).peak_allocated
    assert abs(planned / measured - 1) < 0.10, f"planned {planned / 2**20:.1f} MiB, measured {measured / 2**20:.1f}"
