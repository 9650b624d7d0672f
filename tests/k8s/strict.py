"""Validate objects as `kubectl apply --validate=strict` would: unknown fields, types, and the CRDs' CEL rules."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import celpy
import celpy.evaluation
import jsonschema
import kubernetes_validate
import yaml

from tests.k8s.chart import CRDS

CRD_FILES = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
}
# CEL macros and functions cel-python evaluates; a rule calling anything else is skipped with its reason
_MACROS = {"has", "all", "exists", "exists_one", "map", "filter"}
CEL_FUNCTIONS = _MACROS | {name for name in celpy.evaluation.base_functions if re.fullmatch(r"\w+", name)}
_CALL = re.compile(r"(?<![\w'\"])\.?([A-Za-z_]\w*)\s*\(")
_STRING = re.compile(r"'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"")


@dataclass
class CelStats:
    """How the CEL rules met the objects: evaluated, not applicable on create (transition rules), skipped."""

    evaluated: int = 0
    transition: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        skipped = ", ".join(f"{n} x {why}" for why, n in sorted(self.skipped.items())) or "none"
        return (
            f"CEL rules: {self.evaluated} evaluated, {self.transition} transition rules (no oldSelf on create), "
            f"skipped: {skipped}"
        )


def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version of KIND's CRD (tests/k8s/crds/)."""
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("served", True))
    return version["schema"]["openAPIV3Schema"]


_SCHEMAS: dict[str, dict[str, Any]] = {}


def _schema(kind: str) -> dict[str, Any]:
    if kind not in _SCHEMAS:
        _SCHEMAS[kind] = crd_schema(kind)
    return _SCHEMAS[kind]


def _object_meta(meta: Any, version: str, path: str) -> list[str]:
    """ObjectMeta checked strictly by the official schema (carried by a ConfigMap, which has no other fields)."""
    try:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{path}: {exc.message}"]
    return []


def unknown_fields(value: Any, schema: dict[str, Any], path: str, version: str) -> list[str]:
    """Fields the structural SCHEMA does not declare, as the API server's strict field validation reports them:
    objects with `properties` take only those (plus apiVersion/kind/metadata in an embedded resource), maps
    (`additionalProperties`) check each value, `x-kubernetes-preserve-unknown-fields` keeps anything."""
    errors: list[str] = []
    if isinstance(value, list):
        items = schema.get("items", {})
        for i, item in enumerate(value):
            errors += unknown_fields(item, items, f"{path}[{i}]", version)
        return errors
    if not isinstance(value, dict):
        return errors
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
    embedded = schema.get("x-kubernetes-embedded-resource") is True or path == ""
    for key, child in value.items():
        where = f"{path}.{key}"
        if props is not None and key in props:
            if embedded and key == "metadata" and not props[key].get("properties"):
                errors += _object_meta(child, version, where)
            else:
                errors += unknown_fields(child, props[key], where, version)
        elif embedded and key in ("apiVersion", "kind"):
            continue
        elif embedded and key == "metadata":
            errors += _object_meta(child, version, where)
        elif isinstance(extra, dict):
            errors += unknown_fields(child, extra, where, version)
        elif not preserve and extra is not True:
            errors.append(f'{where}: unknown field "{key}"')
    return errors


def _functions(rule: str) -> set[str]:
    return {m.group(1) for m in _CALL.finditer(_STRING.sub("''", rule))}


def cel_errors(value: Any, schema: dict[str, Any], path: str, stats: CelStats) -> list[str]:
    """Evaluate every `x-kubernetes-validations` rule on the nodes of VALUE its schema node governs (create:
    no oldSelf, so transition rules do not apply). A rule that is false or fails to evaluate is an error."""
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        text = rule["rule"]
        if re.search(r"\boldSelf\b", text):
            if rule.get("optionalOldSelf"):
                stats.skipped["optionalOldSelf (cel-python has no optional types)"] += 1
            else:
                stats.transition += 1
            continue
        missing = _functions(text) - CEL_FUNCTIONS
        if missing:
            stats.skipped[f"cel-python lacks {', '.join(sorted(missing))}"] += 1
            continue
        stats.evaluated += 1
        env = celpy.Environment()
        try:
            result = env.program(env.compile(text)).evaluate({"self": celpy.json_to_cel(value)})
        except (celpy.CELParseError, celpy.CELEvalError) as exc:
            errors.append(f"{path or '<root>'}: rule {text!r} failed to evaluate: {exc}")
            continue
        if isinstance(result, celpy.CELEvalError) or result != celpy.celtypes.BoolType(True):
            errors.append(f"{path or '<root>'}: {rule.get('message') or f'failed rule: {text}'}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            errors += cel_errors(item, schema.get("items", {}), f"{path}[{i}]", stats)
    elif isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            if key in props:
                errors += cel_errors(child, props[key], f"{path}.{key}", stats)
            elif isinstance(extra, dict):
                errors += cel_errors(child, extra, f"{path}.{key}", stats)
    return errors


def validate(doc: dict[str, Any], version: str, stats: CelStats | None = None) -> list[str]:
    """Every error `kubectl apply --validate=strict` (and the CRDs' CEL rules) would report for DOC."""
    stats = stats if stats is not None else CelStats()
    kind = doc.get("kind")
    if kind not in CRD_FILES:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            return [f"{kind}: {exc.message} at {list(exc.path)}"]
        return []
    schema = _schema(kind)
    errors = [f"{kind}: {e.message} at {list(e.path)}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    errors += [f"{kind}: {e}" for e in unknown_fields(doc, schema, "", version)]
    errors += [f"{kind}: {e}" for e in cel_errors(doc, schema, "", stats)]
    return errors
