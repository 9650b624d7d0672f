#!/usr/bin/env python3
"""Write the values table of charts/astrobio-train/README.md from the `# --` comments of values.yaml."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "astrobio-train"
BEGIN, END = "<!-- BEGIN VALUES (charts/gen-readme.py) -->", "<!-- END VALUES -->"
MAX_DEFAULT = 60  # longer defaults (run configs, resource blocks) are left to values.yaml


def _comment(lines: list[str], line: int) -> str | None:
    """The `# --` comment block right above LINE (0-based), joined into one sentence; None when absent."""
    block: list[str] = []
    i = line - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        text = lines[i].strip()[1:].strip()
        if text.startswith("--"):
            block.insert(0, text[2:].strip())
            return " ".join(block)
        block.insert(0, text)
        i -= 1
    return None


def _type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}[type(value)]


def _default(value: object) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return f"`{text}`" if len(text) <= MAX_DEFAULT else "see values.yaml"


def rows(values_text: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) for every documented key, depth first in file order. A mapping whose
    children carry `# --` comments is expanded; other mappings (free-form blocks) are one row."""
    lines = values_text.splitlines()
    data = yaml.safe_load(values_text)
    out: list[tuple[str, str, str, str]] = []

    def walk(node: yaml.MappingNode, value: dict, prefix: str) -> None:
        for key_node, child_node in node.value:
            key = f"{prefix}{key_node.value}"
            child = value[key_node.value]
            doc = _comment(lines, key_node.start_mark.line)
            if doc is None:
                continue
            documented = isinstance(child_node, yaml.MappingNode) and any(
                _comment(lines, k.start_mark.line) is not None for k, _ in child_node.value
            )
            if documented:
                out.append((key, "object", "", doc))
                walk(child_node, child, f"{key}.")
            else:
                out.append((key, _type(child), _default(child), doc))

    walk(yaml.compose(values_text), data, "")
    return out


def table(values_text: str) -> str:
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731
    body = [f"| `{k}` | {t} | {cell(d)} | {cell(doc)} |" for k, t, d, doc in rows(values_text)]
    return "\n".join(["| Key | Type | Default | Description |", "|---|---|---|---|", *body])


def render(readme: str, values_text: str) -> str:
    """README text with the part between the markers replaced by the values table."""
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md is not what it would write")
    args = parser.parse_args(argv)
    readme = CHART / "README.md"
    new = render(readme.read_text(), (CHART / "values.yaml").read_text())
    if args.check:
        if new != readme.read_text():
            print("charts/astrobio-train/README.md is out of date: run python charts/gen-readme.py", file=sys.stderr)
            return 1
        return 0
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
