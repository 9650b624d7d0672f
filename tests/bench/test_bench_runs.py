"""The benchmarks still run: each one, shortened, prints its JSON line with the fields docs/benchmarks.md uses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

# (module, shortening arguments, fields its JSON line must carry as positive numbers)
BENCHES = [
    ("bench.trainer_overhead", ["--rounds", "1", "--steps", "40", "--warmup", "5"],
     ["bare_median_step_ms", "ours_median_step_ms", "ratio", "bare_vs_bare_ratio"]),
    ("bench.startup", ["--rounds", "1"], ["bare_first_step_s", "ours_first_step_s"]),
]


@pytest.mark.parametrize(("module", "args", "fields"), BENCHES, ids=[b[0] for b in BENCHES])
def test_bench_prints_its_result(module: str, args: list[str], fields: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["date"] and result["machine"]
    for name in fields:
        assert result[name] > 0, (name, result)
