"""Render the Helm chart with the real helm binary and load what it renders; shared by the k8s tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, require_tool

CHART = REPO / "charts" / "astrobio-train"
SCENARIOS = sorted((CHART / "ci").glob("*.yaml"))
CRDS = Path(__file__).parent / "crds"
MONITORING_APIS = ("monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/PrometheusRule")
CONTRACTS = REPO / "docs" / "contracts.md"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; with check, a non-zero exit fails the test with helm's stderr."""
    proc = subprocess.run([require_tool("helm"), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template_args(values: list[Path] = (), sets: list[str] = (), monitoring: bool = True) -> list[str]:
    """`helm template` arguments for the chart with values files, --set pairs and the monitoring APIs."""
    args = ["template", "astrobio-train", str(CHART), "--namespace", "astrobio"]
    for path in values:
        args += ["-f", str(path)]
    for item in sets:
        args += ["--set", item]
    if monitoring:
        for api in MONITORING_APIS:
            args += ["--api-versions", api]
    return args


def render(values: list[Path] = (), sets: list[str] = (), monitoring: bool = True) -> list[dict[str, Any]]:
    """Every object `helm template` renders, parsed."""
    out = helm(*template_args(values, sets, monitoring)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Pod specs inside a workload object (PyTorchJob replicas, CronJob job template, Job template)."""
    if doc["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]["spec"]]
    return []


def trainjob_pod(doc: dict[str, Any], runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trainer pod a TrainJob asks for: its runtimePatches pod template with the trainer fields merged into
    the patched container, as the Trainer v2 controller builds it. With RUNTIME (the TrainingRuntime it
    references) the patch is applied onto the runtime's pod template, containers and init containers merged
    by name; without, the runtime's own defaults are left out."""
    (patch,) = doc["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    template = replicated["template"]["spec"]["template"]
    base: dict[str, Any] = {}
    if runtime is not None:
        (job,) = [r for r in runtime["spec"]["template"]["spec"]["replicatedJobs"] if r["name"] == replicated["name"]]
        base = job["template"]["spec"]["template"]["spec"]
    spec = {**base, **template["spec"]}
    for key in ("containers", "initContainers"):
        merged = {c["name"]: dict(c) for c in base.get(key, [])}
        for c in template["spec"].get(key, []):
            merged[c["name"]] = {**merged.get(c["name"], {}), **c}
        if merged:
            spec[key] = list(merged.values())
    trainer = doc["spec"]["trainer"]
    (container,) = [c for c in spec["containers"] if c["name"] == template["spec"]["containers"][0]["name"]]
    container.update({key: trainer[key] for key in ("image", "command", "args", "env")},
                     resources=trainer["resourcesPerNode"])
    return {"metadata": template["metadata"], "spec": spec}


def contract_metrics() -> set[str]:
    """Metric names that docs/contracts.md promises (trainer and data jobs)."""
    return set(re.findall(r"`(astrobio_[a-z0-9_]+)`", CONTRACTS.read_text()))


def load_crd_schema(filename: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of a CRD file."""
    crd = yaml.safe_load((CRDS / filename).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    return version["schema"]["openAPIV3Schema"]


_STRINGS = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "start",
    "end",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(expr: str) -> set[str]:
    """Metric names a (valid) PromQL expression selects: identifiers that are not functions or keywords."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _CLAUSES.sub("", text)
    return {m.group(1) for m in _IDENT.finditer(text) if not m.group(2) and m.group(1).lower() not in _KEYWORDS}


def base_metric(name: str) -> str:
    """The family name a sample name belongs to (histogram series end in _bucket, _sum or _count)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def rules_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rendered PrometheusRule's spec: a plain Prometheus rules file."""
    return objects(docs, "PrometheusRule")[0]["spec"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a Grafana dashboard: panel targets and the selectors of variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"]["query"])
            assert match, var["query"]
            exprs.append(match.group(1))
    return [re.sub(r"\$__(rate_interval|interval|range)", "5m", e) for e in exprs]
