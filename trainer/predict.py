"""`astrobio-train predict`, `evaluate` and `export`: use a trained model bundle without its training run."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from datajobs.errors import ConfigError
from datajobs.store import Store
from trainer import bundle as bundles
from trainer import components
from trainer.components.base import InvalidInput, Problem

PREDICT_EPILOG = """\
examples:
  astrobio-train predict -m runs/planets --input my_planets.csv
  astrobio-train predict -m runs/planets/best --input planets.parquet --output with_masses.parquet
  cat my_planets.csv | astrobio-train predict -m runs/planets --input - --output - --skip-invalid
  astrobio-train predict -m runs/spectrum --input spectrum.csv --option samples=5000 --option mask_um=3.9-4.2
exit codes: 0 done, 2 invalid input rows (one line each on stderr) or a bad bundle/file.
"""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def problem_lines(problems: list[Problem]) -> list[str]:
    """One line per bad row: `row N: column=value: why; column=value: why`."""
    by_row: dict[int, list[str]] = defaultdict(list)
    for row, column, value, why in problems:
        by_row[row].append(f"{column}={value!r}: {why}")
    return [f"row {row}: {'; '.join(items)}" for row, items in sorted(by_row.items())]


def default_output(input_path: str) -> str:
    if input_path == "-":
        return "-"
    path = Path(input_path)
    return str(path.with_name(f"{path.stem}.predictions{path.suffix}"))


def parse_options(items: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings -> dict; a malformed one stops with one line (exit 2)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    model = bundles.load_bundle(args.model, pick_device(args.device))
    output = args.output or default_output(args.input)
    try:
        summary = model.predict_file(args.input, output, skip_invalid=args.skip_invalid,
                                     progress=sys.stderr.isatty(), options=options)
    except InvalidInput as exc:
        for line in problem_lines(exc.problems):
            print(line, file=sys.stderr)
        rows = len({p[0] for p in exc.problems})
        print(f"astrobio-train: error: {rows} invalid input row(s) (rows count from 1 after the header); fix "
              f"them or pass --skip-invalid to write them with empty predictions", file=sys.stderr)
        return InvalidInput.exit_code
    print(summary, file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.report import write_report

    model = bundles.load_bundle(args.model, pick_device(args.device))
    store = Store(args.root or model.config.data.root)
    resolved = store.open(args.data).ref
    sections = model.evaluate(store, resolved)
    out = args.out or Path(f"evaluation-{model.component.name}-{resolved.replace('@', '-')}")
    out.mkdir(parents=True, exist_ok=True)
    trained_on = ", ".join(v.get("version", k) for k, v in model.lineage.items())
    summary = {"component": model.component.name, "model": str(model.path), "trained on": trained_on,
               "evaluated on": resolved, "step": model.step,
               "statistics": "frozen: the bundle's component state from training, not refitted"}
    metrics = {k: v for section in sections for k, v in section.metrics.items()}
    summary.update({k: f"{v:.4f}" for k, v in metrics.items()})
    report = write_report(out, f"Evaluation of {model.path} on {resolved}", summary, sections, "")
    tmp = out / ".metrics.json.tmp"
    tmp.write_text(json.dumps({"data": resolved, "metrics": metrics}, indent=2) + "\n")
    tmp.replace(out / "metrics.json")
    print(f"report: {report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import unique_storage

    model = bundles.load_bundle(args.model, torch.device("cpu"))
    component, cfg, net = model.component, model.config, model.model
    lineage = model.lineage
    if not model.info.get("complete"):  # a run still training: pin and hash the versions it read
        lineage = bundles.dataset_lineage(Store(cfg.data.root), {k: v["version"] for k, v in lineage.items()})
    if hasattr(net, "get_base_model"):  # LoRA/QLoRA: adapters merged into plain weights
        from trainer.lora import merged_state_dict

        weights = merged_state_dict(net)
        cfg = cfg.model_copy(update={"model": {**cfg.model, "finetune": "full", "base_checkpoint": None}})
        state = component.state()
        component = components.get(cfg.component)(cfg)
        component.load_state(state)
    else:
        weights = unique_storage(net.state_dict())
    out = bundles.write_bundle(args.out, weights=weights, component=component, cfg=cfg, lineage=lineage,
                               step=model.step, best=model.info.get("best"), metrics=model.metrics)
    print(f"bundle: {out}")
    return 0


def add_predict_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `predict`, `evaluate` and `export`."""
    p = subparsers.add_parser(
        "predict", help="add a trained model's predictions to a table (CSV, parquet, JSONL)",
        description="Read the input table, check every row against the component's input schema, predict, and "
        "write the same format with the prediction columns (and in_training_domain, domain_note) appended.",
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="bundle folder, or a run folder (uses best/); a path or "
                   "an s3:// URL")
    p.add_argument("--input", required=True, help="CSV, parquet or JSONL file ('-' = CSV on stdin)")
    p.add_argument("--output", default=None,
                   help="output file, same format ('-' = CSV on stdout; default INPUT.predictions.SUFFIX)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="write invalid rows with empty predictions instead of stopping (exit 0, count printed)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a component's predict option, repeatable (spectrum: samples, seed, mask_um, error_scale)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser(
        "evaluate", help="the component's report for a trained model on another dataset version",
        description="Rebuild the evaluation data from --data with the bundle's frozen statistics and write "
        "report.md (the same tables and figures as the training report) and metrics.json into --out.")
    p.add_argument("-m", "--model", required=True, help="bundle folder, or a run folder (uses best/); a path or "
                   "an s3:// URL")
    p.add_argument("--data", required=True, help="dataset NAME@VERSION (or NAME for its latest)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default evaluation-COMPONENT-NAME-VERSION)")
    p.add_argument("--root", default=None, help="storage root (default: the bundle config's data.root)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "export", help="write a self-contained model bundle (LoRA adapters merged) from a run or bundle",
        description="Load a run (its best/ bundle, or for a run still training its newest weights) and write a "
        "bundle folder: model.safetensors, component state, config, lineage, training domain, metrics.")
    p.add_argument("-m", "--model", "--run", dest="model", required=True, type=Path,
                   help="run folder or bundle folder")
    p.add_argument("--out", required=True, type=Path, help="output bundle folder")
    p.set_defaults(func=cmd_export)
