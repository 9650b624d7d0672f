"""The run report: report.md with the loss curves (PNG), the evaluation table, lineage and the data card."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.components.base import ReportSection

REPORT = "report.md"
LOSS_PLOT = "loss.png"


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records; on resumed runs the last record of each (kind, step) wins."""
    if not path.is_file():
        return []
    latest: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["kind"], record["step"])] = record
    return sorted(latest.values(), key=lambda r: (r["step"], r["kind"]))


def plot_losses(records: list[dict], out: Path) -> bool:
    """Train and validation loss against step; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    evals = [(r["step"], r["loss"]) for r in records if r["kind"] == "eval" and "loss" in r]
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(*zip(*train, strict=True), label="train", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    values = [v for _, v in train + evals]
    # a negative log-likelihood can go below zero, which a log axis would silently drop
    ax.set_yscale("log" if min(values) > 0 else "symlog")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def write_report(run_dir: Path, title: str, summary: dict[str, object], sections: list[ReportSection],
                 card: str) -> Path:
    """Write report.md (and loss.png) into the run folder; returns the report path."""
    records = read_metrics(run_dir / "metrics.jsonl")
    has_plot = plot_losses(records, run_dir / LOSS_PLOT)
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    if has_plot:
        lines += ["", "## Loss", "", "![loss curves](loss.png)"]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.markdown]
    if card:
        lines += ["", "## Data used", "", card]
    path = run_dir / REPORT
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
