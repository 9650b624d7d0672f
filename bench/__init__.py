"""Benchmarks (`make bench`); run as modules from the repo root, e.g. `python -m bench.trainer_overhead`."""
