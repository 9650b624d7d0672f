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
    helm,
    metric_names,
    objects,
    render,
    rules_spec,
    template_args,
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


def _alert_values(name: str, **entry: Any) -> dict[str, Any]:
    """Values that override keys of one alert of monitoring.prometheusRule.alerts."""
    return {"monitoring": {"prometheusRule": {"alerts": {name: entry}}}}


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
    proc = run_unit_tests(tmp_path, _alert_values("AstrobioGPUMemoryNearFull", params={"ratio": 0.99}))
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
    assert len(configmaps) == len(DASHBOARDS) == 3
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


def _by_name(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(alert, source label) -> rule, with the group name kept in the rule."""
    return {
        (rule["alert"], rule["labels"].get("source", "")): {**rule, "group": group["name"]}
        for group in spec["groups"]
        for rule in group["rules"]
    }


@pytest.mark.parametrize(
    ("values", "changed"),
    [
        (_alert_values("AstrobioThroughputDrop", enabled=False), {"AstrobioThroughputDrop": None}),
        (
            {"monitoring": {"prometheusRule": {"disabled": {"AstrobioDataWaitHigh": True}}}},
            {"AstrobioDataWaitHigh": None},
        ),
        (
            _alert_values("AstrobioGPUMemoryNearFull", params={"ratio": 0.9}, **{"for": "10m"}),
            {"AstrobioGPUMemoryNearFull": {"for": "10m", "expr": "> 0.9", "summary": "above 90%"}},
        ),
        (
            _alert_values("AstrobioTrainingStalled", severity="warning", params={"seconds": 1800}),
            {"AstrobioTrainingStalled": {"severity": "warning", "expr": "> 1800", "summary": "for 30 minutes"}},
        ),
    ],
    ids=["enabled-false", "disabled-map", "retune-ratio-for", "retune-severity-seconds"],
)
def test_switching_or_retuning_one_alert_changes_only_that_alert(
    spec: dict[str, Any], tmp_path: Path, values: dict[str, Any], changed: dict[str, Any]
) -> None:
    before = _by_name(spec)
    overrides = tmp_path / "values.yaml"
    overrides.write_text(yaml.safe_dump(values))
    after = _by_name(rules_spec(render([overrides])))
    for key, rule in before.items():
        if key[0] not in changed:
            assert after[key] == rule, key
            continue
        expected = changed[key[0]]
        if expected is None:
            assert key not in after
            continue
        new = after[key]
        assert new != rule
        assert new.get("for") == expected.get("for", rule.get("for"))
        assert new["labels"]["severity"] == expected.get("severity", rule["labels"]["severity"])
        assert expected["expr"] in new["expr"] and expected["summary"] in new["annotations"]["summary"]
    assert set(after) <= set(before)


def test_group_switches_labels_and_a_new_alert(spec: dict[str, Any], tmp_path: Path) -> None:
    """defaultRules-style: a group switched off, labels on every alert, an alert added from values alone."""
    values = {
        "monitoring": {
            "prometheusRule": {
                "rules": {"datajobs": False},
                "additionalRuleLabels": {"team": "astro"},
                "alerts": {
                    "AstrobioLossRising": {
                        "group": "training",
                        "expr": "deriv(astrobio_train_loss[${window}]) > 0",
                        "params": {"window": "30m"},
                        "for": "30m",
                        "severity": "warning",
                        "summary": "Loss rising in ${job}",
                        "description": "The training loss rose for half an hour.",
                        "runbookAnchor": "astrobiothroughputdrop",
                    }
                },
            }
        }
    }
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    after = rules_spec(render([path]))
    assert [g["name"] for g in after["groups"]] == ["astrobio-train.training"]
    rules = {r["alert"]: r for r in after["groups"][0]["rules"]}
    assert all(r["labels"]["team"] == "astro" for r in rules.values())
    new = rules["AstrobioLossRising"]
    assert new["expr"] == "deriv(astrobio_train_loss[30m]) > 0"
    assert (
        new["annotations"]["summary"]
        == "Loss rising in {{ $labels.namespace }}/{{ $labels.pytorchjob }} rank {{ $labels.rank }}"
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(after))
    proc = promtool("check", "rules", str(rules_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_alert_parameter_fails_the_render(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(_alert_values("AstrobioGPUMemoryNearFull", expr="x > ${ratioo}")))
    proc = helm(*template_args([path]), check=False)
    assert proc.returncode != 0 and "AstrobioGPUMemoryNearFull: no parameter for ${ratioo}" in proc.stderr


def test_every_component_has_evaluation_panels() -> None:
    """components.json: a row per trainable component with its evaluation-loss queries and the report's metrics
    (astrobio_eval_metric, pushed when the report is written)."""
    board = json.loads((CHART / "dashboards" / "components.json").read_text())
    presets = yaml.safe_load((CHART / "values.yaml").read_text())["jobs"]
    components = {job["component"] for job in presets.values()}
    assert components >= {"planets", "llm", "graph-vae", "spectrum", "datacube", "metabolic-links"}
    for component in components:
        exprs = [
            t["expr"] for p in board["panels"] for t in p.get("targets", []) if f'component="{component}"' in t["expr"]
        ]
        assert any("astrobio_eval_loss" in e for e in exprs), component
        assert any("astrobio_eval_metric" in e and 'metric=~"' in e for e in exprs), component
