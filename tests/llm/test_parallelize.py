"""Strategy wrapping on one gloo rank: checkpointing keeps gradients exact, gradient sync is skipped inside
no_grad_sync for DDP and FSDP2, a meta-device model is sharded then materialized, bad combinations refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.models.transformer import Transformer, TransformerArgs
from trainer.parallelize import ParallelSpec, apply_activation_checkpointing, check_spec, no_grad_sync, parallelize

ARGS = TransformerArgs(vocab_size=101, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=16)
CPU = torch.device("cpu")


@pytest.fixture
def one_rank() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def loss_of(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    tokens = torch.randint(0, ARGS.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    return F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_gives_the_same_gradients(mode: str) -> None:
    torch.manual_seed(0)
    plain = Transformer(ARGS)
    ckpt = Transformer(ARGS)
    ckpt.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(ckpt, mode)
    loss_of(plain).backward()
    loss_of(ckpt).backward()
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in ckpt.named_parameters()]  # names kept
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_ddp_skips_the_all_reduce_inside_no_grad_sync(one_rank: None) -> None:
    model = parallelize(Transformer(ARGS), ParallelSpec("ddp"), CPU)
    calls = []

    def hook(state, bucket):  # counts gradient all-reduces, then does the default one
        calls.append(1)
        return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])

    model.register_comm_hook(None, hook)
    with no_grad_sync(model, skip=True):
        loss_of(model, 1).backward()
    assert calls == []
    with no_grad_sync(model, skip=False):
        loss_of(model, 2).backward()
    assert calls


def test_fsdp_keeps_unsharded_gradients_inside_no_grad_sync(one_rank: None) -> None:
    model = parallelize(Transformer(ARGS), ParallelSpec("fsdp", fsdp_param_dtype="float32"), CPU)
    with no_grad_sync(model, skip=True):
        loss_of(model, 1).backward()
    assert all(p.grad is None for p in model.parameters())  # nothing reduce-scattered yet
    loss_of(model, 2).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_meta_model_is_sharded_then_materialized(one_rank: None) -> None:
    with torch.device("meta"):
        model = Transformer(ARGS)
    model = parallelize(model, ParallelSpec("fsdp", fsdp_param_dtype="float32"), CPU)
    model.to_empty(device=CPU)
    model.init_weights()
    loss = loss_of(model)
    assert torch.isfinite(loss) and abs(loss.item() - 4.615) < 0.5  # ~ln(101) at initialisation


def test_invalid_combinations_are_refused_in_one_line() -> None:
    cases = {
        ParallelSpec("fsdp", optimizer="adamw8bit"): "adamw8bit cannot run with distributed.strategy=fsdp",
        ParallelSpec("deepspeed", optimizer="adamw8bit"): "adamw8bit cannot run with distributed.strategy=deepspeed",
        ParallelSpec("deepspeed", zero_stage=2, offload_params=True): "offload_params needs",
        ParallelSpec("ddp", offload_optimizer=True): "offload_optimizer needs strategy=deepspeed",
    }
    for spec, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            check_spec(spec)
        assert "\n" not in str(err.value)
