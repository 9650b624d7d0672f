"""Data-job metrics arrive at a real prometheus-pushgateway (asserted through its HTTP API)."""

from __future__ import annotations

import requests

from datajobs.cli import main


def pushed(url: str, source: str) -> dict[str, dict[tuple, float]]:
    """metric name -> {label tuple: value} of the group job=astrobio-data, source=SOURCE."""
    groups = requests.get(f"{url}/api/v1/metrics", timeout=5).json()["data"]
    out: dict[str, dict[tuple, float]] = {}
    for group in groups:
        if group["labels"].get("job") != "astrobio-data" or group["labels"].get("source") != source:
            continue
        for name, family in group.items():
            if name in ("labels", "last_push_successful", "push_time_seconds", "push_failure_time_seconds"):
                continue
            for metric in family["metrics"]:
                labels = tuple(
                    sorted((k, v) for k, v in metric["labels"].items() if k not in ("job", "source", "instance"))
                )
                out.setdefault(name, {})[labels] = float(metric["value"])
    return out


def test_metrics_published_unchanged_failed(tmp_path, replay, config, pushgateway, monkeypatch):
    monkeypatch.setenv("PUSHGATEWAY_URL", pushgateway)
    root, cfg = str(tmp_path), str(config())
    replay.fail("/TAP/sync", "500")
    assert main(["run", "nasa-exoplanets", "--root", root, "--config", cfg]) == 0
    m = pushed(pushgateway, "nasa-exoplanets")
    assert m["astrobio_datajob_outcome"][(("outcome", "published"),)] == 1
    assert m["astrobio_datajob_outcome"][(("outcome", "failed"),)] == 0
    assert m["astrobio_datajob_rows_fetched"][()] == 300
    assert m["astrobio_datajob_rows_published"][()] + m["astrobio_datajob_rows_quarantined"][()] == 300
    assert m["astrobio_datajob_http_retries"][()] == 1
    assert m["astrobio_datajob_bytes_published"][()] > 10_000
    assert m["astrobio_datajob_duration_seconds"][()] > 0
    success = m["astrobio_datajob_last_success_timestamp_seconds"][()]

    assert main(["run", "nasa-exoplanets", "--root", root, "--config", cfg]) == 0
    m = pushed(pushgateway, "nasa-exoplanets")
    assert m["astrobio_datajob_outcome"][(("outcome", "unchanged"),)] == 1
    assert m["astrobio_datajob_bytes_published"][()] == 0

    replay.fail_always("/TAP/sync", "500")
    assert main(["run", "nasa-exoplanets", "--root", root, "--config", cfg]) == 1
    m = pushed(pushgateway, "nasa-exoplanets")
    assert m["astrobio_datajob_outcome"][(("outcome", "failed"),)] == 1
    assert m["astrobio_datajob_http_retries"][()] == 2
    assert m["astrobio_datajob_last_success_timestamp_seconds"][()] >= success  # kept from the last success
