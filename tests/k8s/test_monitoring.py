"""Alerts and dashboards: promtool checks and unit tests, runbook links, PromQL that parses, contract names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require_tool
from tests.k8s.chart import (
    CHART,
    base_metric,
    contract_metrics,
    dashboard_queries,
    metric_names,
    objects,
    render,
    rules_spec,
)

UNIT_TESTS = Path(__file__).parent / "alerts_test.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
RUNBOOK = REPO / "docs" / "runbook.md"
# optional exporters the dashboards may read beside ours (panels stay empty without them)
EXTERNAL = re.compile(r"^(DCGM_FI_[A-Z_]+|kube_pod_container_status_restarts_total)$")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def write_rules(directory: Path, values: dict[str, Any] | None = None) -> Path:
    """Render the chart (default values plus VALUES) and write its PrometheusRule spec as rules.yaml."""
    overrides = directory / "values.yaml"
    overrides.write_text(yaml.safe_dump(values or {}))
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rules_spec(render([overrides])), sort_keys=False))
    return path


def run_unit_tests(directory: Path, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    write_rules(directory, values)
    shutil.copy(UNIT_TESTS, directory / UNIT_TESTS.name)
    return promtool("test", "rules", UNIT_TESTS.name, cwd=directory)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return rules_spec(render())


def alerts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in spec["groups"] for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = promtool("check", "rules", str(write_rules(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_unit_tests(tmp_path: Path) -> None:
    proc = run_unit_tests(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The unit tests can fail: with the GPU threshold at 99% the 97.5% case no longer fires."""
    proc = run_unit_tests(tmp_path, {"monitoring": {"prometheusRule": {"gpuMemoryRatio": 0.99}}})
    assert proc.returncode != 0
    assert "AstrobioGPUMemoryNearFull" in proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing_and_silent(spec: dict[str, Any]) -> None:
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    names = {rule["alert"] for rule in alerts(spec)}
    assert names == set(cases)
    assert all(seen == {True, False} for seen in cases.values()), cases


def test_alerts_carry_severity_summary_and_runbook(spec: dict[str, Any]) -> None:
    headings = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    }
    names = set()
    for rule in alerts(spec):
        names.add(rule["alert"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in headings, f"docs/runbook.md has no section for {rule['alert']}"
    assert names >= {
        "AstrobioNonFiniteValues",
        "AstrobioGPUMemoryNearFull",
        "AstrobioThroughputDrop",
        "AstrobioTrainingStalled",
        "AstrobioDataWaitHigh",
        "AstrobioCheckpointFailures",
        "AstrobioDataJobStale",
    }


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query, written as a recording rule, passes promtool's PromQL parser."""
    rules = [
        {"record": f"dashboard:{path.stem}:q{i}", "expr": expr}
        for path in DASHBOARDS
        for i, expr in enumerate(dashboard_queries(json.loads(path.read_text())))
    ]
    assert len(rules) > 30
    file = tmp_path / "dashboards.rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = promtool("check", "rules", str(file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    file.write_text(yaml.safe_dump({"groups": [{"name": "broken", "rules": [{"record": "x:y", "expr": "sum(("}]}]}))
    assert promtool("check", "rules", str(file)).returncode != 0


def used_metric_names(spec: dict[str, Any]) -> set[str]:
    """Metric names (histogram series folded to their family) in the alert rules and the dashboards."""
    exprs = [rule["expr"] for group in spec["groups"] for rule in group["rules"]]
    exprs += [q for path in DASHBOARDS for q in dashboard_queries(json.loads(path.read_text()))]
    return {base_metric(name) for expr in exprs for name in metric_names(expr)}


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(astrobio_step_seconds_bucket{a=~"b|c"}[5m]))) '
        '/ on (job) group_left max(up offset 1h) or label_replace(x_total, "a", "$1", "b", "(.+)") > bool 1e3'
    )
    assert metric_names(expr) == {"astrobio_step_seconds_bucket", "up", "x_total"}


def test_metric_names_are_in_the_contract(spec: dict[str, Any]) -> None:
    used = used_metric_names(spec)
    ours = {name for name in used if not EXTERNAL.match(name)}
    assert ours <= contract_metrics(), f"not in docs/contracts.md: {sorted(ours - contract_metrics())}"
    assert len(ours) >= 25
    assert {"DCGM_FI_DEV_FB_USED", "kube_pod_container_status_restarts_total"} <= used


def test_dashboards_are_templated_and_embedded() -> None:
    docs = render()
    configmaps = {
        d["metadata"]["name"]: d
        for d in objects(docs, "ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    }
    assert len(configmaps) == len(DASHBOARDS) == 2
    for path in DASHBOARDS:
        text = path.read_text()
        board = json.loads(text)
        cm = configmaps[f"astrobio-train-dashboard-{path.stem}"]
        assert json.loads(cm["data"][f"astrobio-{path.stem}.json"]) == board
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "namespace"} <= variables and variables & {"job", "source"}
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and board["uid"].startswith("astrobio-")
        for panel in board["panels"]:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}"
                assert 'namespace=~"$namespace"' in target["expr"]
