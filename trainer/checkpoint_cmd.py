"""`astrobio-train checkpoints list|verify RUN`: the checkpoints of a run folder and whether they verify."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datajobs.errors import DataError
from trainer.checkpoint import MANIFEST, STEP_PREFIX, verify


def _folders(run: Path) -> list[Path]:
    root = run / "checkpoints"
    if not root.is_dir():
        raise DataError(f"{run} has no checkpoints/ folder; pass a run folder (<logging.run_dir>/<run_name>)")
    found = [p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def _size(folder: Path) -> int:
    try:
        return sum(entry["size"] for entry in json.loads((folder / MANIFEST).read_text())["files"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cmd_list(args: argparse.Namespace) -> int:
    """One line per checkpoint: name, bytes, whether it has a manifest (not hashed: use verify)."""
    for folder in _folders(Path(args.run)):
        state = "manifest" if (folder / MANIFEST).is_file() else "no manifest"
        print(f"{folder.name}  {_size(folder):>12d} bytes  {state}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Hash every checkpoint against its manifest; exit 2 when any fails (resume would skip it)."""
    folders = _folders(Path(args.run))
    bad = 0
    for folder in folders:
        problem = verify(folder)
        bad += problem is not None
        print(f"{folder.name}  {'ok' if problem is None else 'DAMAGED: ' + problem}")
    if bad:
        raise DataError(f"{bad} of {len(folders)} checkpoints in {Path(args.run) / 'checkpoints'} do not verify; "
                        f"resume uses the newest one that does")
    return 0


def add_checkpoints_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoints", help="list or verify the checkpoints of a run folder")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (("list", cmd_list, "one line per checkpoint (name, bytes, manifest present)"),
                             ("verify", cmd_verify, "hash every file against the manifest; exit 2 if any fails")):
        q = actions.add_parser(name, help=text)
        q.add_argument("run", metavar="RUN", help="run folder, <logging.run_dir>/<run_name>")
        q.set_defaults(func=func)
