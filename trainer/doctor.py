"""`astrobio-train doctor`: preflight checks of a run config on this machine, each ok / warning / blocker + fix."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datajobs.errors import AstrobioError, ConfigError

OK, WARNING, BLOCKER = "ok", "warning", "blocker"


@dataclass
class Row:
    """One check: its status, what was found and, unless ok, the fix."""

    status: str
    check: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:8s} {self.check:14s} {self.detail}{fix}"


@dataclass
class Machine:
    """What the checks see of this machine (and of the job: processes per node, nodes)."""

    cuda: bool
    gpu_mem: list[int]
    nproc: int
    nnodes: int


def detect(nproc: str | None) -> Machine:
    import torch

    cuda = torch.cuda.is_available()
    mem = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())] if cuda else []
    if nproc in (None, "auto"):
        procs = max(1, len(mem)) if nproc == "auto" else int(os.environ.get("PET_NPROC_PER_NODE", "1") or 1)
    else:
        try:
            procs = int(nproc)
        except ValueError:
            raise ConfigError(f"--nproc-per-node {nproc!r}: expected an integer or 'auto'") from None
    nnodes = int(os.environ.get("PET_NNODES", "1").split(":")[-1] or 1)
    return Machine(cuda, mem, procs, nnodes)


def uses_cuda(cfg: Any, machine: Machine) -> bool:
    return cfg.train.device == "cuda" or (cfg.train.device == "auto" and machine.cuda)


def check_torch(cfg: Any, machine: Machine) -> list[Row]:
    import torch

    rows = [Row(OK, "torch", f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}")]
    if cfg.train.device == "cuda" and not machine.cuda:
        rows.append(Row(BLOCKER, "gpus", "train.device=cuda but no CUDA device is visible",
                        "run on a GPU node (nvidia.com/gpu limit, CUDA_VISIBLE_DEVICES) or set train.device=cpu"))
        return rows
    if not machine.cuda:
        rows.append(Row(OK if cfg.train.device == "cpu" else WARNING, "gpus", "no CUDA device: training on CPU",
                        "" if cfg.train.device == "cpu" else "set train.device=cpu to say so, or run on a GPU node"))
        return rows
    gib = ", ".join(f"{m / 2**30:.1f} GiB" for m in machine.gpu_mem)
    rows.append(Row(OK, "gpus", f"{len(machine.gpu_mem)} visible: {gib}"))
    if uses_cuda(cfg, machine) and machine.nproc > len(machine.gpu_mem):
        rows.append(Row(BLOCKER, "gpus", f"{machine.nproc} processes per node but {len(machine.gpu_mem)} GPUs",
                        f"--nproc-per-node {len(machine.gpu_mem)} (or 'auto')"))
    return rows


def check_nccl(cfg: Any, machine: Machine) -> list[Row]:
    import torch

    dist = cfg.distributed
    world = machine.nproc * machine.nnodes
    needs = dist.backend == "nccl" or (dist.backend == "auto" and uses_cuda(cfg, machine) and world > 1)
    if dist.strategy == "none" or not needs:
        return [Row(OK, "nccl", f"not needed (strategy {dist.strategy}, {world} process(es))")]
    if not (torch.distributed.is_available() and torch.distributed.is_nccl_available()):
        return [Row(BLOCKER, "nccl", f"strategy {dist.strategy} on CUDA needs NCCL; this torch has none",
                    "use the trainer image (CUDA torch with NCCL) or set distributed.backend=gloo")]
    version = ".".join(map(str, torch.cuda.nccl.version())) if machine.cuda else "present"
    return [Row(OK, "nccl", f"NCCL {version}")]


def needed_packages(cfg: Any) -> dict[str, str]:
    """Optional packages this config needs -> why (module name -> reason)."""
    needs: dict[str, str] = {}
    model = cfg.model or {}
    if cfg.distributed.strategy == "deepspeed":
        needs["deepspeed"] = "distributed.strategy=deepspeed"
    if cfg.optim.name == "adamw8bit":
        needs["bitsandbytes"] = "optim.name=adamw8bit"
    if model.get("attention") == "flash":
        needs["flash_attn"] = "model.attention=flash"
    if model.get("finetune") in ("lora", "qlora"):
        needs["peft"] = f"model.finetune={model['finetune']}"
    if model.get("finetune") == "qlora":
        needs["bitsandbytes"] = "model.finetune=qlora"
    return needs


EXTRAS = {"deepspeed": "deepspeed", "bitsandbytes": "gpu", "flash_attn": "gpu", "peft": "lora"}


def check_packages(cfg: Any) -> list[Row]:
    rows = []
    for module, why in needed_packages(cfg).items():
        if importlib.util.find_spec(module) is None:
            rows.append(Row(BLOCKER, "packages", f"{why} needs {module}, which is not installed",
                            f"pip install 'astrobio-train[{EXTRAS[module]}]'"))
        else:
            rows.append(Row(OK, "packages", f"{module} installed ({why})"))
    return rows or [Row(OK, "packages", "no optional package needed")]


def check_storage(cfg: Any) -> tuple[list[Row], Any]:
    """The storage root is reachable and writable: a real write, read back and delete of a probe object."""
    from datajobs.store import Store

    try:
        store = Store(cfg.data.root)
    except AstrobioError as exc:
        return [Row(BLOCKER, "storage", str(exc), "install the extra named above")], None
    probe = f"{store.root}/.astrobio-doctor-{uuid.uuid4().hex}"
    path = store.fs_path(probe)
    try:
        if store.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        store.fs.pipe_file(path, b"doctor")
        if store.fs.cat_file(path) != b"doctor":
            raise OSError("the probe read back different bytes")
        store.fs.rm_file(path)
    except Exception as exc:  # any filesystem driver error means the root is not usable for this run
        return [Row(BLOCKER, "storage", f"{store.root} is not writable ({type(exc).__name__}: {exc})",
                    "fix the permissions or credentials of data.root (ASTROBIO_DATA_ROOT, AWS_* from the Secret) "
                    "or point data.root elsewhere")], store
    return [Row(OK, "storage", f"{store.root} reachable and writable (probe written and deleted)")], store


def check_run_dir(cfg: Any) -> list[Row]:
    """The run root is writable (the trainer writes checkpoints there) and the run folder is not held."""
    from trainer.runfolder import RunFolder

    root = RunFolder(cfg.logging.run_dir)
    probe = f".astrobio-doctor-{uuid.uuid4().hex}"
    try:
        root.makedirs()
        root.write_bytes(probe, b"doctor")
        root.remove(probe)
    except OSError as exc:
        return [Row(BLOCKER, "run folder", f"{root} is not writable ({exc.strerror or exc})",
                    "fix its permissions (the PVC's fsGroup, or the bucket's policy and AWS_* credentials) or set "
                    "logging.run_dir")]
    return check_run_folder_free(root.sub(cfg.run_name), cfg.checkpoint.lease_timeout_seconds)


def check_run_folder_free(run: Path | Any, lease_timeout: float) -> list[Row]:
    """Whether another run holds the run folder's lease (trainer/lease.py): a live holder is a blocker, a dead
    one (heartbeat too old, or its process gone on this host) a warning that the run takes the lease over.
    `run` is a local path or a RunFolder."""
    from trainer.checkpoint import CHECKPOINTS, MANIFEST, step_folders, step_of
    from trainer.lease import LEASE_FILE, read_run_holder, stale_reason
    from trainer.runfolder import RunFolder

    run = run if isinstance(run, RunFolder) else RunFolder(run)
    if not run.exists():
        return [Row(OK, "run folder", f"{run} is new")]
    steps = [step_of(n) for n in step_folders(run) if run.is_file(f"{CHECKPOINTS}/{n}/{MANIFEST}")]
    resume = f"resumes from step {steps[-1]}" if steps else "no complete checkpoint"
    lease = run.url(LEASE_FILE)
    if not run.is_file(LEASE_FILE):
        return [Row(OK, "run folder", f"{run} exists ({resume}), no lease: free")]
    holder = read_run_holder(run)
    if holder is None:
        return [Row(BLOCKER, "run folder", f"{lease} names no holder (unreadable or incomplete): the run would "
                    "refuse the folder", f"remove {lease} if no run uses {run}, or set logging.run_name")]
    why = stale_reason(holder, lease_timeout)
    if why is None:
        return [Row(BLOCKER, "run folder", f"{run} is held by a live run: {holder.describe()}",
                    f"wait for that run to end or stop it (pod {holder.pod}), or set logging.run_name to another "
                    "folder")]
    return [Row(WARNING, "run folder", f"{run} ({resume}) has a dead lease of {holder.describe()} ({why}): the "
                "run will take it over", "none needed if that run is really gone; otherwise stop it first")]


def config_datasets(cfg: Any) -> list[str]:
    """Every dataset reference the config names: data.dataset and any `*dataset*` string key of the model."""
    refs = [cfg.data.dataset]
    refs += [v for k, v in (cfg.model or {}).items() if "dataset" in k and isinstance(v, str)]
    return list(dict.fromkeys(refs))


def check_datasets(cfg: Any, store: Any) -> list[Row]:
    from datajobs.errors import DataError

    if store is None:
        return [Row(BLOCKER, "dataset", "not checked: the storage root is unusable", "fix the storage row first")]
    rows = []
    for ref in config_datasets(cfg):
        try:
            version = store.open(ref)
            problems = version.verify()
        except DataError as exc:
            rows.append(Row(BLOCKER, "dataset", str(exc).split("; ")[0], _fix_of(str(exc))))
            continue
        except OSError as exc:
            rows.append(Row(BLOCKER, "dataset", f"{ref} unreadable under {store.root} ({exc.strerror or exc})",
                            "fix the storage row first"))
            continue
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            rows.append(Row(BLOCKER, "dataset", problems[0].split("; ")[0] + more, _fix_of(problems[0])))
        else:
            count = len(version.manifest["shards"])
            rows.append(Row(OK, "dataset", f"{version.ref}: {count} shard(s) present, sha256 verified"))
    return rows


def _fix_of(message: str) -> str:
    """The command a DataError names (`... with `cmd``), else the message's tail."""
    if "`" in message:
        return message.split("`")[1]
    return message.split("; ")[-1]


def check_memory(cfg: Any, machine: Machine, gpu_mem: str | None) -> list[Row]:
    """The memory planner's verdict for this config on the detected GPUs (or --gpu-mem)."""
    from trainer.planner import GiB, Hardware, Strategy, cheapest, parse_size, plan, workload_from_config

    mem = None
    if gpu_mem is not None:
        try:
            mem = parse_size(gpu_mem)
        except ValueError as exc:
            raise ConfigError(f"--gpu-mem: {exc}") from None
    if cfg.component != "llm":
        return [Row(OK, "memory", f"component {cfg.component}: small model, not planned")]
    if mem is None and machine.gpu_mem:
        mem = min(machine.gpu_mem)
    if mem is None:
        return [Row(WARNING, "memory", "no GPU detected and no --gpu-mem: memory plan skipped",
                    "pass --gpu-mem 80GiB (the GPU the job will get)")]
    gpus = machine.nproc * machine.nnodes
    hw = Hardware(gpus, mem, gpus_per_host=machine.nproc)
    dist = cfg.distributed
    strategy = Strategy(dist.strategy, reshard_after_forward=dist.fsdp_reshard_after_forward,
                        zero_stage=dist.zero_stage, offload_optimizer=dist.offload_optimizer,
                        offload_params=dist.offload_params)
    workload = workload_from_config(cfg)
    verdict = plan(workload, strategy, hw)
    where = f"{gpus} GPU(s) of {mem / GiB:.1f} GiB"
    if verdict.fits:
        return [Row(OK, "memory", f"{strategy.label} fits {where}: {verdict.gpu_total / GiB:.1f} GiB per GPU")]
    best = cheapest(workload, hw)
    if best is not None:
        s = best.strategy
        sets = [f"distributed.strategy={s.name}", f"train.activation_checkpointing={best.workload.checkpointing}",
                f"optim.name={best.workload.optimizer}"]
        if s.name == "fsdp":
            sets.append(f"distributed.fsdp_reshard_after_forward={str(s.reshard_after_forward).lower()}")
        if s.name == "deepspeed":
            sets += [f"distributed.zero_stage={s.zero_stage}",
                     f"distributed.offload_optimizer={str(s.offload_optimizer).lower()}",
                     f"distributed.offload_params={str(s.offload_params).lower()}"]
        fix = (" ".join(f"--set {x}" for x in sets)
               + f" ({s.label}: {best.gpu_total / GiB:.1f} GiB per GPU; see astrobio-train plan)")
    else:
        fix = f"more or larger GPUs, or model.finetune=qlora; see `astrobio-train plan -c CONFIG --gpus {gpus}`"
    return [Row(BLOCKER, "memory", f"{strategy.label} does not fit {where}: {verdict.reason}", fix)]


def check_port(cfg: Any, machine: Machine) -> list[Row]:
    port = cfg.logging.metrics_port
    if not port:
        return [Row(OK, "metrics port", "metrics server off (logging.metrics_port 0)")]
    busy = []
    for rank in range(machine.nproc):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port + rank))
            except OSError:
                busy.append(port + rank)
    if busy:
        return [Row(BLOCKER, "metrics port", f"port {', '.join(map(str, busy))} already in use",
                    "stop what listens there or set logging.metrics_port to a free port")]
    last = f"-{port + machine.nproc - 1}" if machine.nproc > 1 else ""
    return [Row(OK, "metrics port", f"{port}{last} free")]


def diagnose(cfg: Any, machine: Machine, gpu_mem: str | None) -> list[Row]:
    rows = check_torch(cfg, machine) + check_nccl(cfg, machine) + check_packages(cfg)
    storage, store = check_storage(cfg)
    rows += storage + check_datasets(cfg, store) + check_memory(cfg, machine, gpu_mem) + check_port(cfg, machine)
    return rows + check_run_dir(cfg)


def add_doctor_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="preflight: GPUs, packages, storage, datasets, memory plan, port, run folder (exit 2 on a "
        "blocker)", description="Check everything a run of this config needs on this machine before it holds "
        "GPUs; one row per check with ok / warning / blocker and the fix. Exit 0 without blockers, 2 otherwise.")
    p.add_argument("-c", "--config", required=True, help="run config YAML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override")
    p.add_argument("--nproc-per-node", default=None, help="processes per node the run will start")
    p.add_argument("--gpu-mem", default=None, help="check the memory plan against this GPU memory, e.g. 24GiB")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    cfg = load_config(args.config, args.set)
    rows = diagnose(cfg, detect(args.nproc_per_node), args.gpu_mem)
    for row in rows:
        print(row.line())
    blockers = sum(r.status == BLOCKER for r in rows)
    warnings = sum(r.status == WARNING for r in rows)
    print(f"doctor: {blockers} blocker(s), {warnings} warning(s)")
    return 2 if blockers else 0
