"""A rendered data job CronJob's pod run here: it publishes, pushes its metrics, and Prometheus sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import wait_for
from tests.k8s.chart import CHART, base_metric, contract_metrics, objects, render, rules_spec
from tests.k8s.pods import Pod
from tests.k8s.prometheus import Prometheus
from tests.k8s.test_monitoring import used_metric_names


@pytest.mark.slow
def test_cronjob_pod_publishes_and_pushes_metrics(tmp_path: Path, pushgateway: str) -> None:
    """Datasets on the PVC (no S3), the bundled snapshot instead of the live archive (no internet here)."""
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "storage": {"dataRoot": "/mnt/astrobio", "s3": {"enabled": False}},
                "jobs": None,
                "dataJobs": {"exoplanet-catalogue": {"extraArgs": ["--from-snapshot"]}},
            }
        )
    )
    docs = render([CHART / "ci" / "datajobs-values.yaml", values])
    cron = next(c for c in objects(docs, "CronJob") if c["metadata"]["name"].endswith("-exoplanet-catalogue"))
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v)
    pod = Pod(spec, {}, tmp_path / "pod", {claim: tmp_path / "pvc"})

    code, out = pod.wait(pod.start({"PUSHGATEWAY_URL": pushgateway}))  # the in-cluster Service, here
    assert code == 0, out[-3000:]
    assert (tmp_path / "pvc" / "datasets" / "exoplanet-catalogue" / "LATEST").is_file()

    scrape = {
        "job_name": "pushgateway",
        "honor_labels": True,
        "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}],
    }
    prometheus = Prometheus(tmp_path / "prometheus", [scrape], rules_spec(render([values])))
    try:

        def stale() -> set[str]:
            return {a["labels"]["source"] for a in prometheus.firing("AstrobioDataJobStale")}

        # absent_over_time fires for every source until the first scrape; the pushed one then clears
        wait_for(lambda: stale() == {"nasa-exoplanets", "kegg"}, 60, "only the never-pushed sources stale")
        pushed = prometheus.query('group by (__name__, job, source) ({__name__=~"astrobio_datajob_.+"})')
    finally:
        prometheus.stop()
    assert {(s["metric"]["job"], s["metric"]["source"]) for s in pushed} == {("astrobio-data", "exoplanet-catalogue")}
    names = {base_metric(s["metric"]["__name__"]) for s in pushed}
    assert names <= contract_metrics()
    used = {n for n in used_metric_names(rules_spec(render())) if n.startswith("astrobio_datajob_")}
    assert used and used <= names, f"rules/dashboards use data job names nobody pushes: {used - names}"
