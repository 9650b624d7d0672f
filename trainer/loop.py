"""The one training loop every component shares (accumulation, AMP, clipping, NaN guard, eval, checkpoints)."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from datajobs.errors import AstrobioError, ConfigError
from trainer import distributed
from trainer.checkpoint import Checkpointer, SaveOutcome, TrainerState, describe_write_error, write_errors
from trainer.components.base import Component, ComponentData, move_to_device
from trainer.config import RunConfig
from trainer.data.sampler import ResumableBatchSampler, eval_indices
from trainer.distributed import DistEnv
from trainer.engine import Engine, build_engine
from trainer.lease import Lease, LeaseHeld, LeaseLost, new_holder_id
from trainer.runfolder import RunFolder
from trainer.telemetry import StepRecord, Telemetry

log = logging.getLogger("astrobio.train")


class Divergence(AstrobioError):
    """Non-finite loss or gradient norm: the step was not applied and nothing was saved after it."""

    exit_code = 3


class CheckpointsFailing(AstrobioError):
    """checkpoint.max_consecutive_failures checkpoint writes in a row failed: stop rather than train unsaved."""

    exit_code = 4


class Preempted(AstrobioError):
    """SIGTERM received: a checkpoint was written; Kubernetes may restart the job (exit 143)."""

    exit_code = 143


@dataclass
class RunResult:
    run_dir: str  # a local path or a URL
    step: int
    stopped_early: bool
    best_metric: float | None
    best_step: int | None
    lineage: dict[str, str] = field(default_factory=dict)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes the step, agrees across ranks, checkpoints and exits 143."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.requested = True
        log.warning("received signal %d: finishing the step, then checkpointing", signum)

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NanGrad(torch.autograd.Function):
    """Testing aid (train.inject_nan_where=grad): adds zero to the loss and NaN to its gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.train.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """Trains one component according to one run config, in this process (one rank of possibly many)."""

    def __init__(self, cfg: RunConfig, component: Component, store: Any, run_dir: Path | RunFolder,
                 env: DistEnv) -> None:
        self.cfg = cfg
        self.component = component
        self.store = store
        self.folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.run_dir = self.folder.location
        self.env = env
        self.stop = StopFlag()
        self.failed_saves = 0  # checkpoint writes failed in a row
        self.lease: Lease | None = None
        self.holder_id = ""

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained model's full weights on CPU (gathered from shards where the strategy shards)."""
        return self.engine.full_state_dict()

    # -- data ----------------------------------------------------------------------------------
    def _train_batches(self, data: ComponentData, consumed: int) -> tuple[ResumableBatchSampler, Iterator]:
        sampler = ResumableBatchSampler(
            len(data.train), self.cfg.data.batch_size, seed=self.cfg.train.seed, rank=self.env.rank,
            world_size=self.env.world_size, consumed=consumed,
        )
        # Every loader draws its workers' base seed from its own generator, not from the global RNG that dropout
        # uses: creating a loader (each evaluation, each resume) must not shift the training random stream.
        loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=data.collate_fn,
                            num_workers=self.cfg.data.num_workers, persistent_workers=False,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return sampler, iter(loader)

    def _eval_loader(self, dataset, collate_fn) -> DataLoader:
        subset = Subset(dataset, eval_indices(len(dataset), self.env.rank, self.env.world_size))
        size = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
        return DataLoader(subset, batch_size=size, shuffle=False, collate_fn=collate_fn,
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset, collate_fn=None) -> dict[str, float]:
        """Mean loss over the dataset (each sample once across ranks)."""
        model.eval()
        total, count = 0.0, 0
        for i, batch in enumerate(self._eval_loader(dataset, collate_fn)):
            if self.cfg.train.eval_batches and i >= self.cfg.train.eval_batches:
                break
            with autocast(self.cfg, self.env.device):
                out = self.component.evaluation_step(model, move_to_device(batch, self.env.device))
            total += float(out.loss.float()) * out.samples
            count += out.samples
        model.train()
        total, count = distributed.sum_over_ranks([total, float(count)], self.env)
        return {"loss": total / max(count, 1.0)}

    # -- the loop ------------------------------------------------------------------------------
    def _take_lease(self) -> Lease | None:
        """Rank 0 takes the run folder's lease; every rank stops with exit 2 when another run holds it."""
        env, problem = self.env, ""
        lease = None
        if env.is_main:
            lease = Lease(self.folder, self.cfg.checkpoint.lease_timeout_seconds, new_holder_id())
            try:
                lease.acquire()
            except LeaseHeld as exc:
                problem = str(exc)
        (held,) = distributed.any_rank([bool(problem)], env)
        if held:
            raise LeaseHeld(problem or f"rank 0 could not take the lease on {self.run_dir}")
        token = int(lease.holder.id, 16) if lease is not None else 0  # 48 bits: exact in float64
        (token,) = distributed.sum_over_ranks([float(token)], env)
        self.holder_id = f"{int(token):012x}"
        return lease

    def fit(self) -> RunResult:
        lease = self._take_lease()
        self.lease = lease
        try:
            return self._fit()
        finally:
            if lease is not None:
                lease.release()

    def _fit(self) -> RunResult:
        cfg, env = self.cfg, self.env
        seed_everything(cfg.train.seed)
        data = self.data = self.component.build_data(self.store)
        engine = self.engine = build_engine(lambda: self.component.build_model(data), self.component.init_on_meta(),
                                            cfg, env)
        self.model = engine.model
        ckpt = Checkpointer(self.folder, env, cfg.checkpoint.keep_last, self.holder_id, cfg.checkpoint.async_save)
        if cfg.checkpoint.async_save and not engine.saves_in_background and env.is_main:
            log.warning("checkpoint.async_save: %s writes its checkpoints synchronously", type(engine).__name__)
        telemetry = Telemetry(cfg.logging, self.folder, cfg.component, env.rank, env.local_rank, env.device,
                              cfg.train.max_steps, cfg.model_dump(mode="json"))
        state = TrainerState(world_size=env.world_size, micro_batch_size=cfg.data.batch_size,
                             lineage=data.lineage, config_digest=cfg.digest())
        latest = ckpt.resume_point() if cfg.checkpoint.resume else None
        if latest is not None:
            state = ckpt.load(latest, engine)
            if state.micro_batch_size != cfg.data.batch_size:
                raise ConfigError(f"{latest} used data.batch_size={state.micro_batch_size}, this run "
                                  f"{cfg.data.batch_size}: the data position would not match; keep it or "
                                  f"start a new run (logging.run_name)")
            engine.scheduler.load_state_dict(state.scheduler)
            telemetry.on_resume(state.step, latest)
        self.stop.install()
        try:
            return self._run(engine, data, ckpt, telemetry, state)
        finally:
            self.stop.restore()
            self._record(ckpt.close(), ckpt, telemetry, may_stop=False)  # a save in flight when an error ended the run
            telemetry.close()

    def _run(self, engine: Engine, data, ckpt, telemetry, state: TrainerState) -> RunResult:
        cfg, env = self.cfg, self.env
        tc = cfg.train
        model = engine.model
        _, batches = self._train_batches(data, state.consumed_batches)
        telemetry.start(state.step, tc.log_every)
        flops_per_sample = self.component.flops_per_sample(model)
        stopped_early = state.stopped_early
        model.train()
        while state.step < tc.max_steps and not stopped_early:
            step_started = time.perf_counter()
            data_wait = 0.0
            loss_sum, samples, tokens = None, 0, 0
            for micro in range(tc.grad_accum_steps):
                fetch_started = time.perf_counter()
                batch = move_to_device(next(batches), env.device)
                data_wait += time.perf_counter() - fetch_started
                state.consumed_batches += 1
                last = micro == tc.grad_accum_steps - 1
                with engine.micro_step(last):
                    with autocast(cfg, env.device):
                        out = self.component.training_step(model, batch)
                    loss = out.loss.float()
                    if tc.inject_nan_at_step == state.step + 1 and tc.inject_nan_rank in (None, env.rank):
                        loss = loss * float("nan") if tc.inject_nan_where == "loss" else loss + NanGrad.apply(loss)
                    engine.backward(loss, last)
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()  # no host sync here
                samples += out.samples
                tokens += out.tokens
            loss_value = float(loss_sum) / tc.grad_accum_steps
            # A norm known before the step is checked before it; DeepSpeed's only after its step. In both cases
            # a non-finite value stops the run before anything after it is checkpointed. One collective carries
            # the loss, the finite flags, the stop flag and the lost-lease flag.
            norm = engine.grad_norm()
            grad_norm = 0.0 if norm is None else float(norm)
            lost = self.lease is not None and self.lease.lost
            local = [loss_value, not math.isfinite(loss_value), not math.isfinite(grad_norm), self.stop.requested, lost]
            total, bad_loss, bad_grad, preempted, lost = distributed.sum_over_ranks([float(x) for x in local], env)
            if bad_loss or bad_grad:
                self._diverged(bool(bad_loss), loss_value, grad_norm, engine, telemetry, state,
                               "the step was not applied")
            if lost:
                raise LeaseLost(f"the lease on {self.run_dir} was taken over by another run (this run's heartbeat "
                                f"was older than checkpoint.lease_timeout_seconds): stopped at step {state.step} "
                                f"without writing")
            norm = engine.step()
            if norm is not None:
                grad_norm = float(norm)
                (bad_grad,) = distributed.any_rank([not math.isfinite(grad_norm)], env)
                if bad_grad:
                    self._diverged(False, loss_value, grad_norm, engine, telemetry, state, "the step was applied")
            state.step += 1
            global_loss = total / env.world_size
            telemetry.on_step(StepRecord(
                step=state.step, loss=global_loss, lr=engine.lr(), grad_norm=grad_norm,
                samples=samples, tokens=tokens, step_seconds=time.perf_counter() - step_started,
                data_wait_seconds=data_wait,
                flops=None if flops_per_sample is None else flops_per_sample * samples,
            ))
            at_end = state.step == tc.max_steps
            if state.step % tc.eval_every == 0 or at_end:
                stopped_early = self._evaluate(model, data, ckpt, telemetry, state)
                if stopped_early and env.is_main:
                    log.info("early stopping at step %d: no improvement in %d evaluations", state.step,
                             tc.early_stopping_patience)
            state.stopped_early = stopped_early
            last = preempted or stopped_early or at_end
            if last or state.step % cfg.checkpoint.every_steps == 0:
                self._save(engine, ckpt, telemetry, state, background=not last)
            if preempted:
                raise Preempted(f"preempted at step {state.step}; newest checkpoint: {ckpt.latest()}")
            if stopped_early:
                break
        return RunResult(self.run_dir, state.step, stopped_early, state.best_metric, state.best_step, state.lineage)

    def _diverged(self, bad_loss: bool, loss_value: float, grad_norm: float, engine: Engine,
                  telemetry: Telemetry, state: TrainerState, applied: str) -> None:
        """Stop every rank together on a non-finite loss or gradient norm (exit 3), before any checkpoint."""
        local_bad = not math.isfinite(loss_value) or not math.isfinite(grad_norm)
        kind = "loss" if bad_loss else "grad"
        telemetry.on_nonfinite(state.step + 1, kind)
        engine.zero_grad()
        raise Divergence(
            f"non-finite {kind} at step {state.step + 1} (here: loss {loss_value}, grad norm {grad_norm}"
            f"{'' if local_bad else ', finite on this rank'}); {applied} and no checkpoint was written after "
            f"step {state.step}; lower optim.lr or check the data"
        )

    def _evaluate(self, model, data: ComponentData, ckpt: Checkpointer, telemetry: Telemetry,
                  state: TrainerState) -> bool:
        """Evaluate, keep the best weights; True when early stopping says stop."""
        metrics = self.evaluate(model, data.val, data.collate_fn)
        telemetry.on_eval(state.step, metrics)
        value = metrics["loss"]
        if state.best_metric is None or value < state.best_metric:
            state.best_metric, state.best_step = value, state.step
            state.evals_without_improvement = 0
            if self.cfg.checkpoint.save_best:
                self._wait_for_checkpoint(ckpt, telemetry)
                try:
                    ckpt.save_best(model, state.step, "val_loss", value)
                except write_errors() as exc:
                    telemetry.on_checkpoint_failure(state.step, f"best weights: {describe_write_error(exc)}")
        else:
            state.evals_without_improvement += 1
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and state.evals_without_improvement >= patience

    def _save(self, engine: Engine, ckpt: Checkpointer, telemetry: Telemetry, state: TrainerState,
              background: bool) -> None:
        """Checkpoint (in the background where `background` and checkpoint.async_save allow), after the save in
        flight, if any, is done: at most one in flight. A failed write is one line and a count."""
        started = time.perf_counter()
        self._record(ckpt.wait(), ckpt, telemetry)
        state.scheduler = engine.scheduler.state_dict()
        telemetry.flush()  # the step records up to this checkpoint reach metrics.jsonl before it exists
        outcome = ckpt.save(engine, state, background)
        telemetry.on_checkpoint_blocked(time.perf_counter() - started)
        self._record(outcome, ckpt, telemetry)

    def _wait_for_checkpoint(self, ckpt: Checkpointer, telemetry: Telemetry) -> None:
        """Let the save in flight finish (before the best weights are written)."""
        if ckpt.in_flight:
            started = time.perf_counter()
            outcome = ckpt.wait()
            telemetry.on_checkpoint_blocked(time.perf_counter() - started)
            self._record(outcome, ckpt, telemetry)

    def _record(self, outcome: SaveOutcome | None, ckpt: Checkpointer, telemetry: Telemetry,
                may_stop: bool = True) -> None:
        """Count a finished save: training goes on after a failure until too many in a row (exit 4)."""
        if outcome is None:
            return
        if outcome.problem is None:
            self.failed_saves = 0
            telemetry.on_checkpoint(outcome.step, outcome.write_seconds)
            if self.env.is_main:
                log.debug("checkpoint %s in %.2fs", outcome.path, outcome.write_seconds)
            return
        self.failed_saves += 1
        limit = self.cfg.checkpoint.max_consecutive_failures
        telemetry.on_checkpoint_failure(
            outcome.step, f"{outcome.problem} ({self.failed_saves} in a row, limit {limit})",
            continues=may_stop and self.failed_saves < limit)
        if may_stop and self.failed_saves >= limit:
            raise CheckpointsFailing(
                f"{self.failed_saves} checkpoint writes in a row failed, the last at step {outcome.step}: "
                f"{outcome.problem}; free space or fix {ckpt.root}, then rerun to resume from "
                f"{ckpt.latest() or 'the start'}"
            )
