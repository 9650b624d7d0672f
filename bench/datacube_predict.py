"""Latency of one planet's full climate cube from a trained datacube bundle on CPU (goal: under 50 ms).

Usage: python -m bench.datacube_predict RUN_OR_BUNDLE [--repeats 50]. Times `predict_cubes` (parameters ->
forcing fields -> CNN-ViT -> de-standardised cube, 13 variables x up to 10 levels x 32 x 64) for one planet,
one thread, after a warm-up; prints one JSON line with the median and 90th percentile in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from trainer.bundle import load_bundle

PLANET = {"flux": 1200.0, "star": "sun", "synchronous": False, "rotation_period": 1.0, "pressure": 1.0,
          "pco2": 4e-4, "gravity": 9.81, "radius": 1.0, "aquaplanet": False}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model")
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.model, device="cpu")
    comp, model = bundle.component, bundle.model
    rows = comp._rows_of(__import__("pyarrow").Table.from_pylist([PLANET]))
    comp.predict_cubes(model, rows, torch.device("cpu"))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        comp.predict_cubes(model, rows, torch.device("cpu"))
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"bench": "datacube_predict", "median_ms": round(statistics.median(times), 2),
                      "p90_ms": round(times[int(0.9 * len(times)) - 1], 2), "threads": 1,
                      "parameters": sum(x.numel() for x in model.parameters())}))


if __name__ == "__main__":
    main()
