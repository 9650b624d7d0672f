"""Every pod template the chart can render meets Pod Security "restricted" (tests/k8s/podsecurity.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.k8s.chart import SCENARIOS, objects, render
from tests.k8s.podsecurity import pod_templates, violations

# beside the ci/*.yaml scenarios: every job and data job switched on, so no template escapes the check
EVERYTHING_ON = [
    "jobs.llm.enabled=true",
    "dataJobs.ncbi.enabled=true",
    "dataJobs.mast.enabled=true",
]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {path.stem: render([path]) for path in SCENARIOS}
    out["everything-on"] = render(sets=EVERYTHING_ON)
    return out


def test_every_pod_template_is_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    checked, problems, kinds = 0, [], set()
    for scenario, docs in rendered.items():
        for doc in docs:
            for path, metadata, spec in pod_templates(doc):
                checked += 1
                kinds.add(doc["kind"])
                where = f"{scenario}: {doc['kind']}/{doc['metadata']['name']}{path}"
                problems += [f"{where}: {v}" for v in violations(spec, metadata)]
    assert not problems, "\n".join(problems)
    assert {"PyTorchJob", "CronJob", "TrainJob"} <= kinds and checked >= 15, (kinds, checked)


def _contexts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["securityContext"]] + [c["securityContext"] for c in spec["containers"]]


BREAKS = {
    "hostNetwork": lambda s: s.update(hostNetwork=True),
    "hostPath": lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "sysctl": lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
    "hostProcess": lambda s: s["securityContext"].update(windowsOptions={"hostProcess": True}),
    "seLinuxOptions.type": lambda s: s["securityContext"].update(seLinuxOptions={"type": "spc_t"}),
    "seLinuxOptions.user": lambda s: s["containers"][0]["securityContext"].update(seLinuxOptions={"user": "root"}),
    "appArmorProfile": lambda s: s["containers"][0]["securityContext"].update(appArmorProfile={"type": "Unconfined"}),
    "seccompProfile.type": lambda s: s["containers"][0]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}
    ),
    "seccompProfile must be set": lambda s: [c.pop("seccompProfile", None) for c in _contexts(s)],
    "runAsNonRoot": lambda s: s["containers"][0]["securityContext"].update(runAsNonRoot=False),
    "runAsUser": lambda s: s["containers"][0]["securityContext"].update(runAsUser=0),
    "privileged": lambda s: s["containers"][0]["securityContext"].update(privileged=True),
    "allowPrivilegeEscalation": lambda s: s["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
    "procMount": lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked"),
    "capabilities.drop": lambda s: s["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
    "capabilities.add": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "hostPort": lambda s: s["containers"][0].setdefault("ports", []).append({"containerPort": 80, "hostPort": 80}),
    "initContainers": lambda s: s.setdefault("initContainers", []).append({"name": "init", "image": "busybox"}),
}


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_a_non_restricted_pod_fails(rendered: dict[str, list[dict[str, Any]]], rule: str) -> None:
    job = objects(rendered["planets-cpu-values"], "PyTorchJob")[0]
    ((_, metadata, spec),) = [t for t in pod_templates(job) if ".Master." in t[0]]
    assert violations(spec, metadata) == []
    broken = copy.deepcopy(spec)
    BREAKS[rule](broken)
    found = violations(broken, metadata)
    assert found, rule
    assert rule.split(" ")[0] in " ".join(found) or rule == "initContainers", found


def test_apparmor_annotation_is_checked() -> None:
    spec = {"containers": [], "securityContext": {}}
    bad = {"annotations": {"container.apparmor.security.beta.kubernetes.io/pytorch": "unconfined"}}
    good = {"annotations": {"container.apparmor.security.beta.kubernetes.io/pytorch": "runtime/default"}}
    assert violations(spec, bad) and not violations(spec, good)
