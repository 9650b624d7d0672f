"""Row validation: named checks over an Arrow table, a quarantine table with reasons, the invalid-share limit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datajobs.errors import DataError
from datajobs.store import Shard, schema_of, table_to_parquet

QUARANTINE_SHARD = "quarantine.parquet"


@dataclass(frozen=True)
class Check:
    """`invalid(table)` is a boolean mask, True where a row fails for `reason`."""

    reason: str
    invalid: Callable[[pa.Table], np.ndarray]


def _mask(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def required(col: str) -> Check:
    """The value is present (and not an empty string)."""

    def invalid(t: pa.Table) -> np.ndarray:
        c = t[col]
        missing = pc.is_null(c)
        if pa.types.is_string(c.type):
            missing = pc.or_kleene(missing, pc.equal(pc.utf8_trim_whitespace(c), ""))
        return _mask(missing)

    return Check(f"{col} missing", invalid)


def in_range(col: str, lo: float, hi: float, unit: str, *, lo_open: bool = False) -> Check:
    """A present value lies in [lo, hi] ((lo, hi] with lo_open); a missing value passes."""

    def invalid(t: pa.Table) -> np.ndarray:
        c = t[col]
        below = pc.less_equal(c, lo) if lo_open else pc.less(c, lo)
        return _mask(pc.or_kleene(below, pc.greater(c, hi)))

    bracket = "(" if lo_open else "["
    return Check(f"{col} outside {bracket}{lo:g}, {hi:g}] {unit}".rstrip(), invalid)


def unique(col: str) -> Check:
    """Later rows repeating an earlier value of `col` are duplicates."""

    def invalid(t: pa.Table) -> np.ndarray:
        values = t[col].to_pylist()
        seen: set[object] = set()
        out = np.zeros(len(values), dtype=bool)
        for i, v in enumerate(values):
            if v is not None:
                out[i] = v in seen
                seen.add(v)
        return out

    return Check(f"duplicate {col}", invalid)


@dataclass
class Validated:
    valid: pa.Table
    quarantine: pa.Table  # the invalid rows plus a `reason` column ("; "-joined when several fail)
    counts: dict[str, int]  # reason -> rows failing it

    @property
    def rows_invalid(self) -> int:
        return self.quarantine.num_rows

    def shard(self) -> Shard:
        """quarantine.parquet; rows=None so the manifest's row count covers the published data only."""
        return Shard(QUARANTINE_SHARD, table_to_parquet(self.quarantine), rows=None, schema=schema_of(self.quarantine))

    def summary(self) -> dict[str, object]:
        """For the manifest: {"quarantine": {"rows": n, "reasons": {reason: n}}}."""
        return {"quarantine": {"rows": self.rows_invalid, "reasons": self.counts}}


def validate(
    table: pa.Table, checks: list[Check], *, max_invalid_share: float, what: str, allow_empty: bool = False
) -> Validated:
    """Split rows into valid and quarantined; raise DataError when the invalid share exceeds the limit."""
    if table.num_rows == 0 and not allow_empty:
        raise DataError(f"{what}: no rows to validate; the upstream response or file is empty")
    masks = [(check.reason, check.invalid(table)) for check in checks]
    bad = np.zeros(table.num_rows, dtype=bool)
    for _, m in masks:
        bad |= m
    idx = np.flatnonzero(bad)
    reasons = ["; ".join(r for r, m in masks if m[i]) for i in idx]
    counts = Counter({r: int(m.sum()) for r, m in masks if m.any()})
    quarantine = table.take(pa.array(idx, pa.int64())).append_column("reason", pa.array(reasons, pa.string()))
    result = Validated(table.filter(pa.array(~bad)), quarantine, dict(sorted(counts.items())))
    share = len(idx) / max(table.num_rows, 1)
    if share > max_invalid_share:
        top = ", ".join(f"{r}: {n}" for r, n in counts.most_common(3))
        raise DataError(
            f"{what}: {len(idx)} of {table.num_rows} rows invalid ({share:.1%} > max_invalid_share "
            f"{max_invalid_share:.1%}; {top}); nothing published — fix the input or raise max_invalid_share in --config"
        )
    return result
