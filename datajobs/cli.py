"""`astrobio-data`: run a source, list datasets, show or verify a version. Exit codes in docs/contracts.md."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datajobs import logs, sources
from datajobs.card import CARD_SHARD
from datajobs.errors import AstrobioError, DataError
from datajobs.runner import run_source
from datajobs.store import Store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="astrobio-data",
        description="Fetch real archive data, validate it and publish versioned datasets.",
        epilog="Storage root: --root, else $ASTROBIO_DATA_ROOT, else ./data (s3://bucket/prefix works; endpoint "
        "and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). Exit codes: 0 published or "
        "unchanged, 1 upstream failed after retries, 2 bad input, config or data.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    root_help = "storage root URL (default: $ASTROBIO_DATA_ROOT or ./data)"

    run = sub.add_parser("run", help="fetch, validate and publish one source")
    run.add_argument("source", choices=list(sources.SOURCES), help="the source (and dataset) name")
    run.add_argument("--root", help=root_help)
    run.add_argument("--config", type=Path, help="YAML mapping source names to their settings")
    offline = run.add_mutually_exclusive_group()
    offline.add_argument("--from-snapshot", action="store_true", help="import the snapshot bundled with the package")
    offline.add_argument("--from-file", type=Path, metavar="PATH", help="import a saved upstream response")

    ls = sub.add_parser("list", help="datasets and their versions")
    ls.add_argument("--root", help=root_help)

    show = sub.add_parser("show", help="print a version's manifest")
    show.add_argument("ref", metavar="NAME@VERSION", help="e.g. nasa-exoplanets@latest")
    show.add_argument("--root", help=root_help)
    show.add_argument("--card", action="store_true", help="print the dataset card instead")

    verify = sub.add_parser("verify", help="re-check every shard's size and sha256")
    verify.add_argument("ref", metavar="NAME@VERSION")
    verify.add_argument("--root", help=root_help)
    return p


def _list(store: Store) -> None:
    for name in store.names():
        latest = store.latest(name)
        for version in store.versions(name):
            print(f"{name}@{version}{'  (latest)' if version == latest else ''}")


def _show(store: Store, ref: str, card: bool) -> None:
    version = store.open(ref)
    if card:
        print(version.read_bytes(CARD_SHARD).decode(), end="")
    else:
        print(json.dumps(version.manifest, indent=2, sort_keys=True))
        if "run_count" in version.manifest:  # simulation sweeps: how many runs this version holds
            print(f"{version.manifest['run_count']} runs")


def _verify(store: Store, ref: str) -> None:
    version = store.open(ref)
    problems = version.verify()
    if problems:
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    print(f"{version.ref}: {len(version.manifest['shards'])} shards verified")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup()
    try:
        if args.command == "run":
            out = run_source(
                args.source,
                root=args.root,
                config_path=args.config,
                from_snapshot=args.from_snapshot,
                from_file=args.from_file,
            )
            detail = f", {out.rows:,} rows, {out.quarantined:,} quarantined" if out.outcome == "published" else ""
            print(f"{out.name}@{out.version}: {out.outcome}{detail}")
        elif args.command == "list":
            _list(Store(args.root))
        elif args.command == "show":
            _show(Store(args.root), args.ref, args.card)
        else:
            _verify(Store(args.root), args.ref)
    except AstrobioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (PermissionError, FileNotFoundError) as exc:  # storage refused: credentials, bucket or path
        print(
            f"error: storage {args.root or '(default root)'}: {exc}; check --root and the AWS_* variables",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # storage I/O failed
        print(f"error: storage {args.root or '(default root)'}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
