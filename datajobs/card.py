"""Dataset cards: a deterministic CARD.md shard (no timestamps, so unchanged data publishes no new version)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from datajobs.store import Shard

CARD_SHARD = "CARD.md"


def card(
    title: str,
    *,
    source: Sequence[str],
    rows: Mapping[str, int],
    quarantined: Mapping[str, int],
    columns: Sequence[tuple[str, str, str]] = (),
    notes: Sequence[str] = (),
    license: Sequence[str] = (),
) -> Shard:
    """A Markdown card; `columns` are (name, type, meaning with unit)."""
    lines = [f"# {title}", "", "## Source", *[f"- {s}" for s in source], "", "## Rows"]
    lines += [f"- {k}: {v:,}" for k, v in rows.items()]
    lines += ["", "## Quarantined (not published as data; listed in `quarantine.parquet`)"]
    lines += [f"- {reason}: {n:,}" for reason, n in quarantined.items()] or ["- none"]
    if columns:
        lines += ["", "## Columns", "| column | type | meaning |", "|---|---|---|"]
        lines += [f"| `{n}` | {t} | {m} |" for n, t, m in columns]
    if notes:
        lines += ["", "## Notes", *[f"- {n}" for n in notes]]
    if license:
        lines += ["", "## License and acknowledgement", *[f"- {x}" for x in license]]
    return Shard(CARD_SHARD, ("\n".join(lines) + "\n").encode())
