"""Data-job benchmark, in one run: rows/s of parse + validate + publish of the NASA pscomppars snapshot, and
MB/s publishing shards to a local folder versus a real S3 server (Ceph RGW on 127.0.0.1, started here).

Usage: python bench/datajobs.py [--repeats N] [--shard-mb MB] [--shards K]
Needs `make tools` (radosgw) for the S3 half; prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datajobs.runner import run_source  # noqa: E402
from datajobs.store import Shard, Store  # noqa: E402
from tests.datajobs import s3server  # noqa: E402


def nasa_rows_per_second(repeats: int, work: Path) -> tuple[float, int]:
    """Median rows/s of the full `run nasa-exoplanets --from-snapshot` into a fresh local root."""
    rates, rows = [], 0
    for i in range(repeats):
        root = work / f"nasa-{i}"
        started = time.perf_counter()
        out = run_source("nasa-exoplanets", root=str(root), from_snapshot=True)
        rates.append((out.rows + out.quarantined) / (time.perf_counter() - started))
        rows = out.rows + out.quarantined
    return statistics.median(rates), rows


def publish_mb_per_second(root: str, payload: list[Shard], repeats: int) -> float:
    """Median MB/s of Store.publish (shards, manifest, LATEST) of the payload under a fresh dataset name."""
    total = sum(len(s.data) for s in payload) / 2**20
    rates = []
    for _ in range(repeats):
        store = Store(root)
        started = time.perf_counter()
        store.publish(f"bench-{uuid.uuid4().hex[:8]}", payload, source={"kind": "benchmark"})
        rates.append(total / (time.perf_counter() - started))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shard-mb", type=int, default=16)
    p.add_argument("--shards", type=int, default=4)
    args = p.parse_args()
    import logging

    logging.getLogger("astrobio").setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="bench-datajobs-"))
    try:
        rate, rows = nasa_rows_per_second(args.repeats, work)
        # incompressible bytes: the transfer rate, not a codec, is measured
        payload = [Shard(f"part-{i:05d}.bin", os.urandom(args.shard_mb * 2**20)) for i in range(args.shards)]
        local = publish_mb_per_second(str(work / "local"), payload, args.repeats)
        radosgw = shutil.which("radosgw", path=f"{REPO / '.tools' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        if radosgw is None:
            sys.exit("radosgw is not installed (run `make tools`)")
        ceph = s3server.start(work / "ceph", os.path.dirname(radosgw))
        try:
            os.environ.update(ceph.env)
            import s3fs

            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
            s3 = publish_mb_per_second(f"s3://{bucket}/root", payload, args.repeats)
        finally:
            ceph.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        ln.split(":", 1)[1].strip()
        for ln in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if ln.startswith("model name")
    ]
    cpu = models[0] if models else platform.machine()
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"| measurement | median of {args.repeats} |")
    print("|---|---|")
    print(f"| nasa-exoplanets snapshot: parse + validate + publish ({rows:,} rows) | {rate:,.0f} rows/s |")
    size = args.shards * args.shard_mb
    print(f"| publish {args.shards} x {args.shard_mb} MiB shards to a local folder | {local:,.0f} MiB/s |")
    print(
        f"| publish {args.shards} x {args.shard_mb} MiB shards to S3 (Ceph RGW 16.2, 127.0.0.1, memstore) | "
        f"{s3:,.0f} MiB/s |"
    )
    print(f"| S3 / local ({size} MiB per publish) | {s3 / local:.2f} |")


if __name__ == "__main__":
    main()
