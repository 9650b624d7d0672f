"""`astrobio-train checkpoints list|verify RUN`: the checkpoints of a run folder (local or s3://) and whether they
verify."""

from __future__ import annotations

import argparse

from datajobs.errors import DataError
from trainer.checkpoint import CHECKPOINTS, MANIFEST, read_manifest, step_folders, verify
from trainer.runfolder import RunFolder


def _folders(run: RunFolder) -> list[str]:
    if not run.exists(CHECKPOINTS):
        raise DataError(f"{run} has no checkpoints/ folder; pass a run folder (<logging.run_dir>/<run_name>)")
    return step_folders(run)


def _size(run: RunFolder, folder: str) -> int:
    try:
        manifest = read_manifest(run, folder)
        if manifest is not None:
            return sum(entry["size"] for entry in manifest["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return sum(run.files(folder).values())


def cmd_list(args: argparse.Namespace) -> int:
    """One line per checkpoint: name, bytes, whether it has a manifest (not hashed: use verify)."""
    run = RunFolder(args.run)
    for name in _folders(run):
        folder = f"{CHECKPOINTS}/{name}"
        state = "manifest" if run.is_file(f"{folder}/{MANIFEST}") else "no manifest"
        print(f"{name}  {_size(run, folder):>12d} bytes  {state}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash every checkpoint against its manifest (read back from storage); exit 2 when any fails (resume would
    skip it)."""
    run = RunFolder(args.run)
    names = _folders(run)
    bad = 0
    for name in names:
        problem = verify(run, f"{CHECKPOINTS}/{name}")
        bad += problem is not None
        print(f"{name}  {'ok' if problem is None else 'DAMAGED: ' + problem}")
    if bad:
        raise DataError(f"{bad} of {len(names)} checkpoints in {run.url(CHECKPOINTS)} do not verify; "
                        f"resume uses the newest one that does")
    return 0


def add_checkpoints_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoints", help="list or verify the checkpoints of a run folder")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (("list", cmd_list, "one line per checkpoint (name, bytes, manifest present)"),
                             ("verify", cmd_verify, "hash every file against the manifest; exit 2 if any fails")):
        q = actions.add_parser(name, help=text)
        q.add_argument("run", metavar="RUN", help="run folder, <logging.run_dir>/<run_name> (a path or s3:// URL)")
        q.set_defaults(func=func)
