"""`astrobio-train`: train a component, check a config, list components, plan memory, sample from an LLM."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from datajobs.errors import AstrobioError

EPILOG = """\
exit codes: 0 done, 2 bad config or data, 3 numerical divergence (non-finite loss/grad), 4 checkpoints kept failing,
143 preempted (SIGTERM: checkpoint written; a PyTorchJob with restartPolicy ExitCode retries it).
examples:
  astrobio-train run -c configs/planets.yaml
  astrobio-train run -c configs/planets.yaml --set train.max_steps=200 --set optim.lr=3e-4
  astrobio-train run -c configs/llm-tiny.yaml --nproc-per-node 2 --set distributed.strategy=fsdp
  astrobio-train plan -c configs/llm-13b.yaml --gpus 2 --gpu-mem 24GiB --host-mem 256GiB
"""


def setup_logging(verbose: bool = False) -> None:
    rank = os.environ.get("RANK")
    prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format=f"{prefix}%(message)s", datefmt="%H:%M:%S",
                            handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {prefix}%(message)s",
                            datefmt="%Y-%m-%dT%H:%M:%S")


def _is_worker() -> bool:
    """True inside a process started by a launcher (torchrun or ours), which must not launch again."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _nproc(requested: str | None) -> int:
    value = requested or os.environ.get("PET_NPROC_PER_NODE") or "1"
    if value == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    try:
        return int(value)
    except ValueError:
        raise AstrobioError(f"--nproc-per-node {value!r}: expected an integer or 'auto'") from None


def cmd_run(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    cfg = load_config(args.config, args.set)  # validate before starting any worker
    nproc = _nproc(args.nproc_per_node)
    nnodes = int(os.environ.get("PET_NNODES", "1").split(":")[-1] or 1)
    if (nproc > 1 or nnodes > 1) and not _is_worker():
        from trainer.launch import launch

        worker_argv = ["run", "-c", args.config, *(x for s in args.set for x in ("--set", s))]
        return launch(worker_argv, nproc)
    from trainer.run import train

    result, report = train(cfg)
    if report is not None:
        print(f"report: {report}")
        print(f"model bundle: {result.run_dir}/best (astrobio-train predict -m {result.run_dir} --input FILE)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from trainer import components
    from trainer.config import dump_config, load_config

    cfg = load_config(args.config, args.set)
    components.get(cfg.component)(cfg)  # validates the component's `model:` section
    print(dump_config(cfg), end="")
    return 0


def cmd_components(_: argparse.Namespace) -> int:
    from trainer import components

    for name in sorted(components.REGISTRY):
        try:
            cls = components.get(name)
            print(f"{name:12s} {cls.description}")
        except AstrobioError as exc:
            print(f"{name:12s} unavailable: {exc}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="run config YAML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="astrobio-train", description="Train astrobiology models on versioned real datasets.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train a component (resumes from the run folder's newest checkpoint)",
                       description="Train the component named in the config. Re-running the same config resumes "
                       "from the newest complete checkpoint in <logging.run_dir>/<run_name>.", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--nproc-per-node", default=None,
                   help="local worker processes (default: $PET_NPROC_PER_NODE or 1; 'auto' = one per GPU); "
                   "multi-node settings come from PET_NNODES/PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a config and print it resolved (exit 2 on the first problem)")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("components", help="list the trainable components")
    p.set_defaults(func=cmd_components)

    from trainer.checkpoint_cmd import add_checkpoints_parser
    from trainer.doctor import add_doctor_parser
    from trainer.generate import add_generate_parser
    from trainer.planner import add_plan_parser
    from trainer.predict import add_predict_parsers
    from trainer.sample import add_sample_parser
    from trainer.tune import add_tune_parser

    for add in (add_plan_parser, add_generate_parser, add_predict_parsers, add_sample_parser, add_tune_parser,
                add_doctor_parser, add_checkpoints_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except AstrobioError as exc:
        print(f"astrobio-train: error: {exc}", file=sys.stderr)
        # Leave with exactly this code: a native thread torn down at interpreter exit has been seen to abort
        # (SIGABRT, 134), which a PyTorchJob would retry although the error is permanent.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
