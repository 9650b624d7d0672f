"""A real Prometheus scrapes a real short planets run with an injected NaN: our series arrive, the alert fires."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, free_port, require_module, wait_for
from tests.k8s.chart import base_metric, contract_metrics, dashboard_queries, render, rules_spec
from tests.k8s.pods import Pod, replica_pods
from tests.k8s.prometheus import Prometheus
from tests.k8s.test_monitoring import EXTERNAL, used_metric_names

JOB_LABELS = {"namespace": "astrobio", "pytorchjob": "astrobio-train-planets", "pod": "astrobio-train-planets-master-0"}
# exported only on CUDA, by token models, or where FLOPs are known: a CPU planets run has none of them
CONDITIONAL = {
    "astrobio_tokens_per_second",
    "astrobio_mfu_ratio",
    "astrobio_gpu_memory_allocated_bytes",
    "astrobio_gpu_memory_reserved_bytes",
    "astrobio_gpu_memory_peak_bytes",
    "astrobio_gpu_memory_total_bytes",
}
# pushed to the Pushgateway once the report is written, not served on the metrics port
PUSHED = {"astrobio_eval_metric"}
COMPONENTS_BOARD = REPO / "charts" / "astrobio-train" / "dashboards" / "components.json"


@pytest.fixture
def planets_pod(tmp_path: Path) -> Pod:
    """The default chart's planets Master pod, its volumes mapped under tmp_path."""
    return replica_pods(render(), tmp_path)[0][2]


@pytest.mark.slow
def test_prometheus_scrapes_a_real_run_and_the_nan_alert_fires(
    planets_pod: Pod, tmp_path: Path, data_root: Path
) -> None:
    port = free_port()
    planets_pod.configure_run(
        data_root,
        port,
        **{
            "logging.metrics_linger_seconds": 8,
            "train.max_steps": 60,
            "train.inject_nan_at_step": 40,
            "train.eval_every": 10,
            "checkpoint.every_steps": 10,
            "train.log_every": 5,
            "distributed.strategy": "none",
        },
    )
    # the PodMonitor's relabelings give the trainer's series these target labels in a cluster
    scrape = {
        "job_name": "astrobio-trainer",
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": JOB_LABELS}],
    }
    prometheus = Prometheus(tmp_path / "prometheus", [scrape], rules_spec(render()))
    try:
        proc = planets_pod.start({})  # one process, no operator env: WORLD_SIZE 1
        wait_for(lambda: prometheus.firing("AstrobioNonFiniteValues"), 120, "AstrobioNonFiniteValues firing", proc)
        (alert,) = prometheus.firing("AstrobioNonFiniteValues")
        assert alert["labels"] | JOB_LABELS == alert["labels"]
        assert (alert["labels"]["kind"], alert["labels"]["rank"], alert["labels"]["severity"]) == (
            "loss",
            "0",
            "critical",
        )
        assert alert["annotations"]["summary"] == "Non-finite loss in astrobio/astrobio-train-planets rank 0"
        (step,) = prometheus.query('astrobio_train_step{pytorchjob="astrobio-train-planets"}')
        assert float(step["value"][1]) == 39, "the last applied step before the NaN"
        names = {
            base_metric(s["metric"]["__name__"])
            for s in prometheus.query('group by (__name__) ({__name__=~"astrobio_.+"})')
        }
        code, out = planets_pod.wait(proc)
        assert code == 3, out[-3000:]
    finally:
        prometheus.stop()
    scraped = {n for n in names if not n.endswith("_created")}
    assert scraped <= contract_metrics(), f"exported but not in docs/contracts.md: {scraped - contract_metrics()}"
    used = {
        n
        for n in used_metric_names(rules_spec(render()))
        if not EXTERNAL.match(n) and not n.startswith("astrobio_datajob_")
    }
    missing = used - CONDITIONAL - PUSHED - scraped
    assert not missing, f"rules/dashboards use names a real run does not export: {missing}"
    assert used >= CONDITIONAL


@pytest.mark.slow
def test_report_metrics_reach_prometheus_through_the_pushgateway(
    planets_pod: Pod, tmp_path: Path, data_root: Path, pushgateway: str
) -> None:
    """The chart's planets pod pushes its report's metrics; a real Prometheus scraping a real Pushgateway (as
    kube-prometheus-stack does, honor_labels) answers every planets report panel, one series per named metric."""
    planets_pod.configure_run(
        data_root,
        free_port(),
        **{
            "logging.metrics_linger_seconds": 0,
            "train.max_steps": 20,
            "train.eval_every": 10,
            "checkpoint.every_steps": 10,
            "distributed.strategy": "none",
            "model.protocol_evaluation": False,
        },
    )
    code, out = planets_pod.wait(planets_pod.start({"PUSHGATEWAY_URL": pushgateway, "POD_NAMESPACE": "astrobio"}))
    assert code == 0, out[-3000:]
    scrape = {"job_name": "pushgateway", "honor_labels": True, "static_configs": [{"targets": [pushgateway[7:]]}]}
    prometheus = Prometheus(tmp_path / "prometheus", [scrape], {"groups": []})
    run = JOB_LABELS["pytorchjob"]  # the chart names the run after the job
    try:
        wait_for(lambda: prometheus.query(f'astrobio_eval_metric{{run="{run}"}}'), 60, "the pushed report metrics")
        series = {s["metric"]["metric"]: s for s in prometheus.query(f'astrobio_eval_metric{{run="{run}"}}')}
        rmse = series["test_rmse_dex"]
        labels = {"job": "astrobio-train", "namespace": "astrobio", "component": "planets", "split": "test"}
        assert rmse["metric"] | labels == rmse["metric"]
        assert 0 < float(rmse["value"][1]) < 2, "log10 mass RMSE in dex"
        assert series["chen_kipping_rmse_dex"]["metric"]["split"] == "report"
        board = json.loads(COMPONENTS_BOARD.read_text())
        panels = [q for q in dashboard_queries(board) if "astrobio_eval_metric" in q and 'component="planets"' in q]
        assert len(panels) == 2
        for query in panels:
            answer = prometheus.query(query.replace("$job", run).replace("$namespace", "astrobio"))
            wanted = re.search(r'metric=~"([^"]+)"', query).group(1).split("|")
            assert sorted(a["metric"]["metric"] for a in answer) == sorted(wanted), query
    finally:
        prometheus.stop()


@pytest.mark.gpu
def test_cuda_run_exports_the_gpu_memory_gauges(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """On a CUDA machine the planets pod of manifests/planets-job.yaml exports what the GPU panels and alert read."""
    torch = require_module("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data_root = request.getfixturevalue("data_root")
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "planets-job.yaml").read_text()) if d]
    pod = replica_pods(docs, tmp_path)[0][2]
    port = free_port()
    pod.configure_run(
        data_root,
        port,
        **{
            "logging.metrics_linger_seconds": 5,
            "train.max_steps": 100,
            "train.device": "cuda",
            "train.precision": "bf16",
            "distributed.strategy": "none",
        },
    )
    proc = pod.start({})
    samples: dict[str, float] = {}

    def scraped() -> bool:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        samples.update(
            {m.group(1): float(m.group(2)) for m in re.finditer(r"^(astrobio_\w+)\{[^}]*\} (\S+)$", text, re.M)}
        )
        return samples.get("astrobio_gpu_memory_reserved_bytes", 0) > 0  # NaN until the first logging step

    wait_for(scraped, 180, "GPU memory gauges set", proc)
    code, out = pod.wait(proc)
    assert code == 0, out[-3000:]
    assert {base_metric(n) for n in samples if not n.endswith("_created")} <= contract_metrics()
    assert {n for n in CONDITIONAL if n.startswith("astrobio_gpu_memory_")} <= set(samples)
    reserved, total = samples["astrobio_gpu_memory_reserved_bytes"], samples["astrobio_gpu_memory_total_bytes"]
    assert 0 < reserved < total, "the GPU memory alert's ratio is meaningful"
