"""Run one source: build its product, publish it through the Store, report the outcome and push metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from datajobs import sources
from datajobs.config import load_config
from datajobs.errors import DataError
from datajobs.http import HttpClient
from datajobs.job import Context, Mode
from datajobs.metrics import JobMetrics
from datajobs.store import Store

log = logging.getLogger("astrobio.data.run")


@dataclass
class Outcome:
    name: str
    outcome: str  # published | unchanged
    version: str | None
    rows: int = 0
    quarantined: int = 0


def recreate_command(name: str, mode: Mode, file: Path | None) -> str:
    flag = {"live": "", "snapshot": " --from-snapshot", "file": f" --from-file {file}"}[mode]
    return f"astrobio-data run {name}{flag}"


def run_source(
    name: str,
    *,
    root: str | None = None,
    config_path: Path | None = None,
    from_snapshot: bool = False,
    from_file: Path | None = None,
) -> Outcome:
    """Fetch/import, validate and publish `name`; AstrobioError on failure (metrics pushed either way)."""
    module = sources.get(name)
    metrics = JobMetrics(name)
    http: HttpClient | None = None
    try:
        config = load_config(config_path, name, module.Config, list(sources.SOURCES))
        mode: Mode = "snapshot" if from_snapshot else "file" if from_file else "live"
        if mode == "snapshot" and module.SNAPSHOT is None:
            raise DataError(f"{name} has no bundled snapshot; run it live or with --from-file PATH")
        http = HttpClient(config.http)
        store = Store(root)
        previous = None
        if (latest := store.latest(name)) is not None:
            try:
                previous = store.open(f"{name}@{latest}")
            except DataError as exc:
                log.warning("latest version unreadable; publishing a fresh one", extra={"error": str(exc)})
        ctx = Context(name, config, http, mode, from_file, store, previous, logging.getLogger(f"astrobio.data.{name}"))
        log.info("start", extra={"source": name, "mode": mode, "root": store.root})
        product = module.build(ctx)
        if product is None:
            result = Outcome(name, "unchanged", latest)
            log.info("upstream not modified since LATEST", extra={"source": name, "version": latest})
        else:
            metrics.rows_fetched.set(product.rows_fetched)
            metrics.rows_quarantined.set(product.rows_quarantined)
            published = store.publish(
                name,
                product.shards,
                source=product.source,
                recreate_command=recreate_command(name, mode, from_file),
                extra=product.extra,
            )
            rows = sum(s.rows or 0 for s in product.shards)
            metrics.rows_published.set(rows)
            metrics.bytes_published.set(published.bytes_written)
            result = Outcome(
                name,
                "published" if published.created else "unchanged",
                published.version,
                rows=rows,
                quarantined=product.rows_quarantined,
            )
            log.info(
                result.outcome,
                extra={
                    "source": name,
                    "version": published.version,
                    "rows": rows,
                    "quarantined": product.rows_quarantined,
                },
            )
        metrics.finish(result.outcome, http.retries)
        return result
    except Exception:  # any failure (ours, storage, a bug) is reported as `failed`, then re-raised
        metrics.finish("failed", http.retries if http else 0)
        raise
    finally:
        metrics.push()
