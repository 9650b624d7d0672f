"""Batch-job metrics pushed to a Prometheus Pushgateway (job `astrobio-data`, grouping label `source`)."""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

log = logging.getLogger("astrobio.data.metrics")
PUSHGATEWAY_ENV = "PUSHGATEWAY_URL"
OUTCOMES = ("published", "unchanged", "failed")


class JobMetrics:
    """The gauges of one run (names in docs/contracts.md), pushed once at the end when PUSHGATEWAY_URL is set."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.started = time.monotonic()
        self.registry = CollectorRegistry()

        gauge = self._gauge
        self.duration = gauge("duration_seconds", "wall time of the run")
        self.rows_fetched = gauge("rows_fetched", "rows or records read from upstream")
        self.rows_published = gauge("rows_published", "rows in the published version")
        self.rows_quarantined = gauge("rows_quarantined", "rows rejected by validation")
        self.bytes_published = gauge("bytes_published", "bytes written by the publish")
        self.http_retries = gauge("http_retries", "HTTP retries during the run")
        self.outcome = gauge("outcome", "1 for this run's outcome", ("outcome",))

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"astrobio_datajob_{name}", doc, labels, registry=self.registry)

    def finish(self, outcome: str, http_retries: int) -> None:
        self.duration.set(time.monotonic() - self.started)
        self.http_retries.set(http_retries)
        for o in OUTCOMES:
            self.outcome.labels(outcome=o).set(1 if o == outcome else 0)
        if outcome != "failed":  # only pushed on success, so a failure keeps the previous timestamp
            self._gauge("last_success_timestamp_seconds", "unix time of the last successful run").set_to_current_time()

    def push(self) -> None:
        """Push (add/replace these series) to $PUSHGATEWAY_URL; a failed push is logged, never fatal to the job."""
        url = os.environ.get(PUSHGATEWAY_ENV)
        if not url:
            return
        try:
            pushadd_to_gateway(url, job="astrobio-data", grouping_key={"source": self.source}, registry=self.registry)
        except OSError as exc:
            log.warning("metrics push failed", extra={"pushgateway": url, "error": str(exc)})
