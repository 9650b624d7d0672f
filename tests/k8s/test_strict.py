"""Strict validation of every rendered object: unknown fields fail, CRD CEL rules hold (tests/k8s/strict.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.k8s import strict
from tests.k8s.chart import SCENARIOS, objects, render

VERSION = "1.30.0"


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict[str, Any]]]:
    return {path.stem: render([path]) for path in SCENARIOS}


@pytest.fixture(scope="module")
def pytorchjob(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return objects(docs["planets-cpu-values"], "PyTorchJob")[0]


@pytest.fixture(scope="module")
def trainjob(docs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return objects(docs["trainjob-values"], "TrainJob")[0]


def test_every_rendered_object_is_strictly_valid(docs: dict[str, list[dict[str, Any]]]) -> None:
    stats = strict.CelStats()
    errors, kinds = [], set()
    for scenario, rendered in docs.items():
        for doc in rendered:
            kinds.add(doc["kind"])
            errors += [f"{scenario}: {doc['metadata']['name']}: {e}" for e in strict.validate(doc, VERSION, stats)]
    print(stats.line())  # shown with -s / -rA: how many rules ran, how many do not apply on create, skips
    assert not errors, "\n".join(errors)
    assert set(strict.CRD_FILES) <= kinds
    assert stats.evaluated >= 2 and stats.transition >= 1, stats.line()
    assert not stats.skipped, stats.line()  # every create-time rule of these CRDs is one cel-python evaluates


def _errors(doc: dict[str, Any], edit) -> list[str]:
    doc = copy.deepcopy(doc)
    edit(doc)
    return strict.validate(doc, VERSION)


def test_misspelt_fields_fail(pytorchjob: dict[str, Any], trainjob: dict[str, Any]) -> None:
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    master = replicas["Master"]
    cases = {
        "replicaz": (pytorchjob, lambda d: d["spec"]["pytorchReplicaSpecs"]["Master"].update(replicaz=1)),
        "runPolicyy": (pytorchjob, lambda d: d["spec"].update(runPolicyy={"backoffLimit": 1})),
        "imagee": (
            pytorchjob,
            lambda d: d["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(
                imagee="x"
            ),
        ),
        "numNodez": (trainjob, lambda d: d["spec"]["trainer"].update(numNodez=2)),
        "labelz": (trainjob, lambda d: d["metadata"].update(labelz={})),
    }
    for field, (doc, edit) in cases.items():
        errors = _errors(doc, edit)
        assert len(errors) == 1 and field in errors[0], (field, errors)
    assert master["replicas"] == 1 and "replicaz" not in master  # the fixtures were not edited in place


def test_misspelt_field_in_a_builtin_kind_fails(docs: dict[str, list[dict[str, Any]]]) -> None:
    cron = objects(docs["datajobs-values"], "CronJob")[0]
    errors = _errors(
        cron, lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].update(imagee="x")
    )
    assert len(errors) == 1 and "imagee" in errors[0], errors


def test_cel_violations_fail(trainjob: dict[str, Any]) -> None:
    errors = _errors(trainjob, lambda d: d["spec"].update(managedBy="example.com/my-controller"))
    assert len(errors) == 1 and ".spec.managedBy" in errors[0], errors
    errors = _errors(trainjob, lambda d: d["metadata"].update(name="Planets-" + "x" * 60))
    assert any("RFC 1035" in e for e in errors) and any("63 characters" in e for e in errors), errors


def test_preserve_unknown_fields_and_rule_bookkeeping() -> None:
    """x-kubernetes-preserve-unknown-fields keeps anything; transition rules and unknown functions are counted."""
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "url": {
                "type": "string",
                "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "immutable"},
                    {"rule": "isURL(self)", "message": "a URL"},
                    {"rule": "self.startsWith('https://')", "message": "https only"},
                ],
            },
        },
    }
    value = {"free": {"anything": {"nested": 1}}, "url": "http://x"}
    assert strict.unknown_fields(value, schema, "", VERSION) == []
    assert strict.unknown_fields({"fre": {}}, schema, "", VERSION) == ['.fre: unknown field "fre"']
    stats = strict.CelStats()
    assert strict.cel_errors(value, schema, "", stats) == [".url: https only"]
    assert (stats.evaluated, stats.transition, dict(stats.skipped)) == (1, 1, {"cel-python lacks isURL": 1})


def test_values_schema_is_not_the_only_guard() -> None:
    """A pass-through block (resources) with a misspelt key renders, and the strict check refuses it."""
    (job,) = objects(render(sets=["jobs.planets.resources.limitz.memory=1Gi"]), "PyTorchJob")
    errors = strict.validate(job, VERSION)
    assert errors and all("limitz" in e for e in errors), errors
