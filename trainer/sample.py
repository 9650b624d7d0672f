"""`astrobio-train sample`: molecules from a generative bundle's prior, one SMILES per line."""

from __future__ import annotations

import argparse
from pathlib import Path

from datajobs.errors import ConfigError
from datajobs.store import write_local_atomic
from trainer import bundle as bundles
from trainer.predict import pick_device

EPILOG = """\
examples:
  astrobio-train sample -m runs/graph-vae-qm9 -n 10000 --out molecules.smi --seed 0
  astrobio-train sample -m runs/graph-vae-qm9/best -n 1000 --out raw.smi --no-constraints
Invalid graphs (possible only with --no-constraints) are written as empty lines, so line i is sample i.
"""


def write_samples(smiles: list[str | None], out: Path) -> str:
    """Write one SMILES per line atomically; returns a one-line summary."""
    write_local_atomic(out, "".join(f"{s or ''}\n" for s in smiles).encode())
    valid = sum(s is not None for s in smiles)
    return f"wrote {len(smiles)} samples ({valid} valid, {len(set(s for s in smiles if s))} unique) to {out}"


def run_sample(args: argparse.Namespace) -> int:
    loaded = bundles.load_bundle(args.model, pick_device(args.device))
    sample = getattr(loaded.component, "sample", None)
    if sample is None:
        raise ConfigError(f"component {loaded.component.name!r} is not generative (it has no sample())")
    smiles = sample(loaded.model, args.n, args.seed, loaded.device, constrained=not args.no_constraints)
    print(write_samples(smiles, Path(args.out)))
    return 0


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="draw molecules from a generative model bundle's prior", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="bundle folder or run folder")
    p.add_argument("-n", type=int, default=10000, help="number of samples")
    p.add_argument("--out", required=True, help="output file, one SMILES per line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-constraints", action="store_true", help="no valence mask: report the raw model")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.set_defaults(func=run_sample)
