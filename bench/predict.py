"""Prediction benchmark: rows/s of `astrobio-train predict` for planets on CPU, file in and file out.

The 100k input rows are the real held-out planets of a short planets run (exoplanet-catalogue from the bundled
snapshot), repeated until there are enough: the same values many times, so the rate measures the code path
(reading, schema checks, features, MLP, training-domain kNN, writing), not the variety of the data.

Usage: python -m bench.predict [--rows N] [--repeats K] [--model BUNDLE_OR_RUN]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent

import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from tests.trainer.bundle_helpers import held_out  # noqa: E402
from trainer.bundle import load_bundle  # noqa: E402


def train_quick_run(work: Path) -> Path:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([BIN / "astrobio-data", "run", "exoplanet-catalogue", "--from-snapshot", "--root",
                    str(work / "data")], check=True, capture_output=True, env=env)
    sets = [f"data.root={work / 'data'}", f"logging.run_dir={work / 'runs'}", "train.max_steps=200",
            "train.eval_every=25"]
    subprocess.run([BIN / "astrobio-train", "run", "-c", str(REPO / "configs" / "planets.yaml"),
                    *(x for s in sets for x in ("--set", s))], check=True, capture_output=True, env=env)
    return work / "runs" / "planets"


def repeated_rows(run: Path, rows: int) -> tuple[pa.Table, int]:
    """The run's held-out input rows repeated to `rows` rows; also returns how many distinct rows there are."""
    _, _, table = held_out(run)
    table = table.drop_columns(["pl_bmasse"])
    copies = -(-rows // table.num_rows)
    return pa.concat_tables([table] * copies).slice(0, rows), table.num_rows


def timed(fn, repeats: int) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="an existing planets bundle or run folder")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = args.model or train_quick_run(work)
        table, distinct = repeated_rows(run, args.rows)
        pcsv.write_csv(table, work / "in.csv")
        pq.write_table(table, work / "in.parquet")
        bundle = load_bundle(run, torch.device("cpu"))
        results = [
            ("CSV -> CSV, in process (`Bundle.predict_file`)",
             timed(lambda: bundle.predict_file(str(work / "in.csv"), str(work / "out.csv")), args.repeats)),
            ("parquet -> parquet, in process",
             timed(lambda: bundle.predict_file(str(work / "in.parquet"), str(work / "out.parquet")), args.repeats)),
            ("CSV -> CSV, `astrobio-train predict` (process start included)",
             timed(lambda: subprocess.run([BIN / "astrobio-train", "predict", "-m", str(run), "--input",
                                           str(work / "in.csv"), "--output", str(work / "cli.csv"),
                                           "--device", "cpu"], check=True, capture_output=True), args.repeats)),
        ]
    print(f"planets predict, {args.rows:,} rows ({distinct} distinct real held-out planets repeated), "
          f"CPU, torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, median of {args.repeats}")
    print("\n| path | seconds | rows/s |\n|---|---|---|")
    for label, seconds in results:
        print(f"| {label} | {seconds:.2f} | {args.rows / seconds:,.0f} |")


if __name__ == "__main__":
    main()
