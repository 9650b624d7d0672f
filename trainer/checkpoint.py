"""Checkpoints through torch.distributed.checkpoint: verified atomic step folders, keep-last-K, best weights.

A checkpoint folder `checkpoints/step-00000042/` holds the DCP shards of model and optimizer (any
strategy: single process, DDP, FSDP2), `trainer_state.json` (step, data position, scheduler, early
stopping, lineage), `rng-rank<R>.npz` per rank and, written last, `manifest.json` (size and sha256 of every
other file). It is written under `.tmp-<lease holder>-step-…`; once every rank has finished, rank 0 fsyncs the files and
folders, writes the manifest and renames the folder. Resume verifies the newest checkpoint against its
manifest and falls back to the newest one that verifies, so a killed job, a flipped bit or a truncated
shard never silently changes a run.
With `checkpoint.async_save` a periodic save copies model and optimizer state to CPU memory and returns; DCP
writes the shards in a background thread (over a gloo process group of its own, so its collectives never
interleave with training's), and rank 0's publishing thread then fsyncs, writes the manifest and renames, exactly
as a synchronous save does. At most one save is in flight: `wait()` ends it, and every rank learns its outcome.
Our payloads load without unpickling objects: DCP entries with weights_only=True, JSON, npz
(allow_pickle=False). The one exception is DCP's own `.metadata` index, which torch writes and reads with pickle.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import random
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from datajobs.errors import DataError
from trainer.distributed import DistEnv, any_rank, barrier, sum_over_ranks
from trainer.engine import Engine, full_state_dict
from trainer.runfolder import RunFolder, fsync_path, fsync_tree

if TYPE_CHECKING:
    from torch.distributed.checkpoint.staging import DefaultStager

log = logging.getLogger("astrobio.train")

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"


@functools.cache
def write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError (full disk, EFBIG, EIO, permissions), DCP's CheckpointException
    (a BaseException wrapping each rank's error) and, when botocore is installed, S3 client errors. A function,
    so `except write_errors()` imports DCP only when an error reaches it."""
    from torch.distributed.checkpoint.api import CheckpointException

    errors: tuple[type[BaseException], ...] = (OSError, CheckpointException)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return errors
    return (*errors, BotoCoreError, ClientError)


class CheckpointWriteError(Exception):
    """A checkpoint could not be written on some rank; raised on every rank, the temp folder is removed."""


def describe_write_error(exc: BaseException) -> str:
    """One line: the first rank's error of a CheckpointException, else the error itself."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(exc, CheckpointException) and exc.failures:
        rank, (inner, _) = next(iter(sorted(exc.failures.items())))
        exc = inner
        where = f"rank {rank}: "
    else:
        where = ""
    return f"{where}{type(exc).__name__}: {exc}".replace("\n", " ")


@dataclass(frozen=True)
class SaveOutcome:
    """What one checkpoint save came to, the same on every rank: its folder, or why it failed."""

    step: int
    path: str  # the step folder: a local path or a URL
    write_seconds: float  # from the start of the save until the folder was renamed into place (or failed)
    problem: str | None = None


@dataclass(frozen=True)
class _InFlight:
    """A save whose shards are being written in the background; `publishing` resolves to (seconds, problem)."""

    step: int
    tmp: str  # names in the run folder
    final: str
    publishing: Future


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0
    consumed_batches: int = 0  # micro-batches taken from the sampler (same on every rank)
    world_size: int = 1
    micro_batch_size: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False  # a rerun of an early-stopped run trains no further
    lineage: dict[str, str] = field(default_factory=dict)
    config_digest: str = ""


def _rng_state() -> dict[str, np.ndarray]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    arrays = {
        "torch": torch.get_rng_state().numpy(),
        "python_internal": np.asarray(internal, dtype=np.int64),
        "python_meta": np.asarray([version, -1 if gauss is None else 1], dtype=np.int64),
        "python_gauss": np.asarray([0.0 if gauss is None else gauss], dtype=np.float64),
        "numpy_keys": np_state[1],
        "numpy_meta": np.asarray([np_state[2], np_state[3]], dtype=np.int64),
        "numpy_gauss": np.asarray([np_state[4]], dtype=np.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["cuda"] = torch.cuda.get_rng_state().numpy()
    return arrays


def _set_rng_state(arrays: dict[str, np.ndarray]) -> None:
    torch.set_rng_state(torch.from_numpy(arrays["torch"].copy()))
    version, has_gauss = (int(x) for x in arrays["python_meta"])
    gauss = float(arrays["python_gauss"][0]) if has_gauss > 0 else None
    random.setstate((version, tuple(int(x) for x in arrays["python_internal"]), gauss))
    pos, has_np_gauss = (int(x) for x in arrays["numpy_meta"])
    np.random.set_state(("MT19937", arrays["numpy_keys"], pos, has_np_gauss, float(arrays["numpy_gauss"][0])))
    if "cuda" in arrays and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.from_numpy(arrays["cuda"].copy()))


def unique_storage(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases of tied weights (safetensors refuses shared storage); the first name is kept."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    unique = {}
    for name, tensor in weights.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            unique[name] = tensor.contiguous()
    return unique


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def step_of(name: str) -> int:
    return int(name[len(STEP_PREFIX):])


def write_manifest(run: RunFolder, folder: str, step: int) -> None:
    """Size and sha256 of every other file of the folder (read back and hashed), written atomically after all of
    them (local: temp + fsync + rename; object store: one PUT)."""
    files = {name: {"size": size, "sha256": run.sha256(f"{folder}/{name}")}
             for name, size in sorted(run.files(folder).items()) if name != MANIFEST}
    run.write_text(f"{folder}/{MANIFEST}", json.dumps({"step": step, "files": files}, indent=1) + "\n")


def read_manifest(run: RunFolder, folder: str) -> dict[str, Any] | None:
    """The manifest of a checkpoint folder; None when it has none (an incomplete write)."""
    try:
        return json.loads(run.read_text(f"{folder}/{MANIFEST}"))
    except FileNotFoundError:
        return None


def verify(run: RunFolder, folder: str) -> str | None:
    """None when every file of the manifest is there with its size and sha256 (each read back and hashed), else
    what is wrong (one phrase)."""
    try:
        manifest = read_manifest(run, folder)
        if manifest is None:
            return f"no {MANIFEST} (the write did not finish or the manifest was deleted)"
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({exc})"
    if STATE_FILE not in files:
        return f"{MANIFEST} does not list {STATE_FILE}"
    for name, entry in files.items():
        path = f"{folder}/{name}"
        try:
            size = run.size(path)
        except OSError:
            return f"{name} is missing"
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']}"
        if run.sha256(path) != entry["sha256"]:
            return f"{name} does not match its sha256 in {MANIFEST}"
    return None


def step_folders(run: RunFolder) -> list[str]:
    """The names of the step folders under `checkpoints/`, oldest first (with or without a manifest)."""
    return sorted(run.folders(CHECKPOINTS, STEP_PREFIX), key=step_of)


class Checkpointer:
    """Saves and restores training state under `<run>/checkpoints`, and best weights under `<run>/best`.

    On a local disk a step folder is written under a temp name and renamed into place. On an object store (no
    rename) DCP's fsspec writer writes `step-N/` directly and the manifest, written last, is what makes it
    complete: a `step-N/` without one is an incomplete write, ignored by resume and removed when the lease
    holder starts."""

    def __init__(self, run_dir: Path | str | RunFolder, env: DistEnv, keep_last: int, holder: str,
                 async_save: bool = False) -> None:
        """`holder` is the id of the run folder's lease (trainer.lease): it names this run's temp folders, and
        temp folders of any other holder (dead, since this run holds the lease) are removed. `async_save` lets
        `save(..., background=True)` write in the background (collective: every rank passes the same)."""
        self.run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.root = self.run.url(CHECKPOINTS)
        self.best_dir = self.run.scratch / "best"  # remote: the working copy, published after each write
        self.env = env
        self.keep_last = keep_last
        self.tmp_prefix = f"{TMP_PREFIX}{holder}-"
        self.async_save = async_save
        self._in_flight: _InFlight | None = None
        self._stager: DefaultStager | None = None
        self._publisher: ThreadPoolExecutor | None = None
        self._group: dist.ProcessGroup | None = None
        if async_save:
            # Staged copies are kept between saves (the next save copies into them): host memory of one copy of
            # model and optimizer state, pinned on CUDA for fast device-to-host copies.
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            self._stager = DefaultStager(StagingOptions(use_pinned_memory=torch.cuda.is_available(),
                                                        use_shared_memory=False, use_async_staging=False,
                                                        use_non_blocking_copy=False))
            self._publisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-publish")
            if dist.is_initialized():
                self._group = dist.new_group(backend="gloo")  # the background write's own collectives
        if env.is_main:
            self.run.makedirs(CHECKPOINTS)
            for stale in self.run.folders(CHECKPOINTS, TMP_PREFIX):
                if not stale.startswith(self.tmp_prefix):
                    self.run.remove(f"{CHECKPOINTS}/{stale}")  # left by a holder killed while saving
            if self.run.remote:
                self.run.fetch("best")  # the working copy of best/ as the bucket holds it (a rerun elsewhere)
                for name in step_folders(self.run):
                    if not self.run.is_file(f"{CHECKPOINTS}/{name}/{MANIFEST}"):
                        log.warning("removing %s/%s: a write that did not finish (no %s)", self.root, name, MANIFEST)
                        self.run.remove(f"{CHECKPOINTS}/{name}")
        barrier(env)

    def _rel(self, name: str) -> str:
        return f"{CHECKPOINTS}/{name}"

    def folders(self) -> list[str]:
        """Every step folder (locations: a path or URL), oldest first."""
        return [self.run.url(self._rel(name)) for name in step_folders(self.run)]

    def complete(self) -> list[str]:
        """Checkpoints with a manifest (not hashed here), oldest first."""
        return [self.run.url(self._rel(n)) for n in step_folders(self.run)
                if self.run.is_file(f"{self._rel(n)}/{MANIFEST}")]

    def latest(self) -> str | None:
        done = self.complete()
        return done[-1] if done else None

    def resume_point(self) -> str | None:
        """The newest checkpoint that verifies (rank 0 hashes, every rank gets the answer); None: start fresh.

        Each newer checkpoint that fails verification is named in one warning; when there are checkpoints
        but none verifies, a DataError (exit 2) names the folder.
        """
        step = -1.0
        if self.env.is_main:
            names = step_folders(self.run)
            for name in reversed(names):
                problem = verify(self.run, self._rel(name))
                if problem is None:
                    step = float(step_of(name))
                    break
                log.warning("checkpoint %s is damaged (%s); trying the one before", self.run.url(self._rel(name)),
                            problem)
            else:
                step = -2.0 if names else -1.0
        (step,) = sum_over_ranks([step if self.env.is_main else 0.0], self.env)
        if step == -2:
            raise DataError(f"no checkpoint in {self.root} verifies against its manifest; run `astrobio-train "
                            f"checkpoints verify {self.run}` to see why, or start a new run "
                            f"(logging.run_name)")
        return None if step < 0 else self.run.url(self._rel(step_dir_name(int(step))))

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def save(self, engine: Engine, state: TrainerState, background: bool = False) -> SaveOutcome | None:
        """Write a checkpoint collectively; its outcome, or None when it goes on in the background.

        `background` (with async_save, for an engine that saves in the background): return once the state is
        copied to CPU memory; `wait()` gives the outcome. A write error on any rank fails the save on every rank
        (the ranks agree after each phase, so none is left waiting in a collective) and removes the temp folder
        (on an object store: the step folder, which has no manifest yet).
        """
        if self._in_flight is not None:
            raise RuntimeError("a checkpoint is still being written: wait() for it first")
        started = time.perf_counter()
        final = self._rel(step_dir_name(state.step))
        tmp = final if self.run.remote else self._rel(f"{self.tmp_prefix}{step_dir_name(state.step)}")
        try:
            self._phase(lambda: self._make_tmp(tmp))
            self._phase(lambda: self._write_small_files(tmp, state))
            if background and self.async_save and engine.saves_in_background:
                writing = engine.save_in_background(self.run.url(tmp), self.env.is_distributed, self._group,
                                                    self._stager)
                publishing = self._publisher.submit(self._publish_after, writing, tmp, final, state.step, started)
                self._in_flight = _InFlight(state.step, tmp, final, publishing)
                return None
            self._phase(lambda: engine.save(self.run.url(tmp), self.env.is_distributed))
            self._phase(lambda: self._publish(tmp, final, state.step))
        except CheckpointWriteError as exc:
            self._discard(tmp)
            return SaveOutcome(state.step, self.run.url(final), time.perf_counter() - started, str(exc))
        return SaveOutcome(state.step, self.run.url(final), time.perf_counter() - started)

    def wait(self) -> SaveOutcome | None:
        """Block until the save in flight (if any) is written and published; its outcome, agreed by every rank
        (collective when a save is in flight: every rank calls it at the same point)."""
        if self._in_flight is None:
            return None
        flight, self._in_flight = self._in_flight, None
        seconds, problem = flight.publishing.result()
        (failed,) = any_rank([bool(problem)], self.env)
        final = self.run.url(flight.final)
        if not failed:
            return SaveOutcome(flight.step, final, seconds)
        self._discard(flight.tmp)
        return SaveOutcome(flight.step, final, seconds, problem or "the write failed on another rank")

    def close(self) -> SaveOutcome | None:
        """Let the save in flight finish without any collective (the run is ending, maybe on an error); its
        outcome on this rank. Frees the staging memory."""
        outcome = None
        if self._in_flight is not None:
            flight, self._in_flight = self._in_flight, None
            seconds, problem = flight.publishing.result()
            if problem:
                self._discard(flight.tmp)
            outcome = SaveOutcome(flight.step, self.run.url(flight.final), seconds, problem or None)
        if self._publisher is not None:
            self._publisher.shutdown()
        if self._stager is not None:
            self._stager.close()
        return outcome

    def _phase(self, write) -> None:
        problem = ""
        try:
            write()
        except write_errors() as exc:
            problem = describe_write_error(exc)
        (failed,) = any_rank([bool(problem)], self.env)  # also the barrier between phases
        if failed:
            raise CheckpointWriteError(problem or "the write failed on another rank")

    def _make_tmp(self, tmp: str) -> None:
        """Rank 0: an empty folder to write into (remote: the step folder, without the damaged checkpoint of this
        step that resume skipped; its manifest goes first, so a kill midway leaves an incomplete write)."""
        if self.env.is_main:
            if self.run.remote:
                self.run.remove(f"{tmp}/{MANIFEST}")
            self.run.remove(tmp)
            self.run.makedirs(tmp)

    def _discard(self, tmp: str) -> None:
        if self.env.is_main:
            self.run.remove(tmp)

    def _write_small_files(self, tmp: str, state: TrainerState) -> None:
        """This rank's RNG state and (rank 0) the trainer state, as they are at the step being saved."""
        buffer = io.BytesIO()
        np.savez(buffer, **_rng_state())
        self.run.write_bytes(f"{tmp}/rng-rank{self.env.rank}.npz", buffer.getvalue())
        if self.env.is_main:
            self.run.write_text(f"{tmp}/{STATE_FILE}", json.dumps(asdict(state), indent=2) + "\n")

    def _publish_after(self, writing: Future, tmp: str, final: str, step: int,
                       started: float) -> tuple[float, str]:
        """The publishing thread: wait for DCP's background write (done on every rank once it returns), then
        publish; (seconds since the save started, the problem or '')."""
        try:
            writing.result()
            self._publish(tmp, final, step)
        except write_errors() as exc:
            return time.perf_counter() - started, describe_write_error(exc)
        return time.perf_counter() - started, ""

    def _publish(self, tmp: str, final: str, step: int) -> None:
        """Rank 0, once every rank's files are written: (local) fsync, manifest, rename into place; (object store)
        manifest last; then drop the oldest."""
        if not self.env.is_main:
            return
        if self.run.remote:
            write_manifest(self.run, final, step)
        else:
            local_tmp, local_final = Path(self.run.url(tmp)), Path(self.run.url(final))
            fsync_tree(local_tmp)
            write_manifest(self.run, tmp, step)
            if local_final.exists():  # a damaged checkpoint of this step that resume skipped
                shutil.rmtree(local_final)
            local_tmp.rename(local_final)
            fsync_path(local_final.parent)
        for old in step_folders(self.run)[: -self.keep_last]:
            if self.run.remote:
                self.run.remove(f"{self._rel(old)}/{MANIFEST}")  # first: a kill midway leaves an incomplete write
            self.run.remove(self._rel(old))

    def load(self, path: str, engine: Engine) -> TrainerState:
        """Restore model, optimizer and this rank's RNG from a complete checkpoint (a location from
        resume_point())."""
        folder = RunFolder(path)
        state = TrainerState(**json.loads(folder.read_text(STATE_FILE)))
        if state.world_size != self.env.world_size:
            raise DataError(
                f"{path} was written with {state.world_size} data-parallel ranks, this run has "
                f"{self.env.world_size}: the data position cannot be resharded; resume with "
                f"{state.world_size} ranks or start a new run (logging.run_name)"
            )
        engine.load(path, self.env.is_distributed)
        rng_file = f"rng-rank{self.env.rank}.npz"
        if folder.is_file(rng_file):
            with np.load(io.BytesIO(folder.read_bytes(rng_file)), allow_pickle=False) as arrays:
                _set_rng_state(dict(arrays))
        return state

    def save_best(self, model: nn.Module, step: int, metric_name: str, metric: float) -> None:
        """Full (gathered) weights into `best/` (the bundle's weights part), written atomically by rank 0 (on an
        object store: written locally, then uploaded with bundle.json last); the run completes the bundle
        (component state, config, lineage, domain) when it ends."""
        from trainer.bundle import INFO, write_weights_only

        weights = full_state_dict(model)
        failure: BaseException | None = None
        if self.env.is_main:
            try:
                write_weights_only(self.best_dir, unique_storage(weights),
                                   {"step": step, "metric": metric_name, "value": metric})
                self.run.publish("best", last=INFO)
            except write_errors() as exc:
                failure = exc
        barrier(self.env)  # every rank passes it, also when rank 0's write failed
        if failure is not None:
            raise failure
