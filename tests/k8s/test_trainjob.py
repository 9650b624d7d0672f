"""Trainer v2: a job rendered as a TrainJob, and the launcher's shutdown window inside the grace period."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.k8s.chart import CHART, SCENARIOS, load_crd_schema, objects, pod_specs, render, trainjob_pod
from tests.k8s.pods import Pod

TRAINJOB_VALUES = CHART / "ci" / "trainjob-values.yaml"
MANIFEST = REPO / "manifests" / "planets-trainjob.yaml"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
POD_KEYS = {
    "serviceAccountName",
    "terminationGracePeriodSeconds",
    "securityContext",
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "volumes",
    "containers",
}
GPU_TRAINJOB = [
    "jobs.llm.enabled=true",
    "jobs.llm.kind=TrainJob",
    "jobs.llm.gpusPerNode=4",
    "jobs.llm.trainJob.runtimeRef.kind=TrainingRuntime",
    "jobs.llm.trainJob.runtimeRef.name=astrobio-torch",
    "jobs.llm.trainJob.replicatedJob=trainer",
    "jobs.llm.trainJob.container=trainer",
]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def trainjobs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["astrobio.io/job"]: d for d in objects(docs, "TrainJob")}


def test_trainjob_replaces_the_pytorchjob() -> None:
    docs = render([TRAINJOB_VALUES])
    assert [d["metadata"]["name"] for d in objects(docs, "TrainJob")] == ["astrobio-train-planets"]
    assert not objects(docs, "PyTorchJob")
    assert objects(render(), "PyTorchJob") and not objects(render(), "TrainJob"), "PyTorchJob stays the default"


def test_trainjob_spec_and_controller_rules() -> None:
    """What the CRD's CEL rules and the torch runtime need, beyond the OpenAPI schema tests/k8s/test_chart checks."""
    job = trainjobs(render([TRAINJOB_VALUES]))["planets"]
    name = job["metadata"]["name"]
    assert DNS_1035.match(name) and len(name) <= 63
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-astro"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": name}
    assert spec["activeDeadlineSeconds"] == 43200
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
    assert trainer["command"] == ["astrobio-train"]
    assert trainer["args"] == ["run", "-c", "/etc/astrobio/config.yaml", "--nproc-per-node=1"]
    assert not [e for e in trainer["env"] if e["name"].startswith("PET_")], "the controller owns PET_*"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "astrobio-train"
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = trainjob_pod(job)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["node"]
    assert pod["metadata"]["labels"]["astrobio.io/trainjob"] == name
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 630


def test_trainjob_pod_matches_the_pytorchjob_pod() -> None:
    """Same job, either kind: the container command, env, mounts, volumes and pod settings are the same."""
    sets = ["imagePullSecrets[0]=regcred", "jobs.planets.nodeSelector.pool=cpu"]
    pytorch = objects(render(sets=sets), "PyTorchJob")[0]["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    train = trainjob_pod(objects(render(sets=[*sets, "jobs.planets.kind=TrainJob"]), "TrainJob")[0])
    assert train["metadata"]["annotations"] == pytorch["metadata"]["annotations"], "same run config checksum"
    assert set(train["spec"]) == POD_KEYS - {"tolerations", "affinity"}
    for key in set(train["spec"]) - {"containers"}:
        assert train["spec"][key] == pytorch["spec"][key], key
    (want,), (got,) = pytorch["spec"]["containers"], train["spec"]["containers"]
    for key in ("image", "command", "args", "env", "volumeMounts", "securityContext", "resources"):
        assert got[key] == want[key], key


def test_trainjob_pod_security_restricted() -> None:
    """The patched pod meets Pod Security "restricted"; the token is off on the ServiceAccount the pods use."""
    docs = render([TRAINJOB_VALUES], sets=["serviceAccount.create=true"])
    pod = trainjob_pod(trainjobs(docs)["planets"])["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all(set(v) - {"name"} <= {"configMap", "emptyDir", "persistentVolumeClaim"} for v in pod["volumes"])
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["runAsUser"] > 0
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}
    for env in container["env"]:
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]):
            assert "secretKeyRef" in env["valueFrom"], env
    (account,) = objects(docs, "ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"]
    assert account["automountServiceAccountToken"] is False


def test_trainjob_gpu_runtime_monitoring_and_network() -> None:
    """A GPU TrainJob on a namespaced runtime: GPUs per node, names the patches target, a scrape per local rank."""
    docs = render(sets=GPU_TRAINJOB)
    job = trainjobs(docs)["llm"]
    assert job["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"
    trainer = job["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 4 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 4
    pod = trainjob_pod(job)
    assert pod["spec"]["containers"][0]["name"] == "trainer"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    errors = list(jsonschema.Draft7Validator(load_crd_schema("trainer.kubeflow.org_trainjobs.yaml")).iter_errors(job))
    assert not errors, [e.message for e in errors]

    endpoints = objects(docs, "PodMonitor")[0]["spec"]["podMetricsEndpoints"]
    assert len(endpoints) == 1 + 4, "the PyTorchJob endpoint, then one per TrainJob local rank"
    addresses = []
    for endpoint in endpoints[1:]:
        keep, address, job_label = endpoint["relabelings"][:3]
        # the runtime's container declares only the rendezvous port 29500 (or none): one target per pod
        assert re.fullmatch(keep["regex"], f"{job['metadata']['name']};trainer;29500")
        assert re.fullmatch(keep["regex"], f"{job['metadata']['name']};trainer;")
        assert not re.fullmatch(keep["regex"], ";pytorch;23456"), "PyTorchJob pods have no trainjob label"
        assert not re.fullmatch(keep["regex"], f"{job['metadata']['name']};istio-proxy;15090")
        assert address["targetLabel"] == "__address__"
        addresses.append(re.sub(address["regex"], address["replacement"].replace("$1", r"\1"), "10.0.0.7"))
        assert job_label["targetLabel"] == "pytorchjob", "the dashboards and alerts group by this label"
    assert addresses == [f"10.0.0.7:{9400 + rank}" for rank in range(4)]
    trainer_policy = next(p for p in objects(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-trainer"))
    scrape = trainer_policy["spec"]["ingress"][1]["ports"][0]
    assert (scrape["port"], scrape["endPort"]) == (9400, 9403)
    pods = pod["metadata"]["labels"]
    assert all(pods[k] == v for k, v in trainer_policy["spec"]["podSelector"]["matchLabels"].items())


def runtimes(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["astrobio.io/job"]: d for d in objects(docs, "TrainingRuntime")}


def test_trainjob_runs_the_doctor_from_the_runtime_the_chart_renders() -> None:
    """runtimePatches cannot add a container, so the job's own TrainingRuntime carries the doctor init container:
    the same container a PyTorchJob pod of the same job gets, mounting the volumes the patch provides."""
    docs = render(sets=["jobs.planets.kind=TrainJob", "jobs.planets.workers=1"])
    job, runtime = trainjobs(docs)["planets"], runtimes(docs)["planets"]
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"] == job["metadata"]["name"]
    assert runtime["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 2, "torch": {}}
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = trainjob_pod(job, runtime)["spec"]
    (init,), (trainer,) = pod["initContainers"], pod["containers"]
    assert init["name"] == "doctor" and init["args"][:4] == ["doctor", "-c", *trainer["args"][2:4]]
    for key in ("image", "env", "resources", "volumeMounts", "securityContext"):
        assert init[key] == trainer[key], key  # GPUs included: the doctor sees what the trainer will
    assert {m["name"] for m in init["volumeMounts"]} <= {v["name"] for v in pod["volumes"]}
    pytorch = pod_specs(objects(render(sets=["jobs.planets.workers=1"]), "PyTorchJob")[0])[0]
    assert pytorch["initContainers"] == [init]


def test_trainjob_doctor_is_switchable() -> None:
    docs = render(sets=["jobs.planets.kind=TrainJob", "doctor.enabled=false"])
    assert "initContainers" not in trainjob_pod(trainjobs(docs)["planets"], runtimes(docs)["planets"])["spec"]
    own = [f"jobs.planets.trainJob.{k}" for k in ("renderRuntime=false", "runtimeRef.kind=TrainingRuntime",
                                                   "runtimeRef.name=team-torch", "replicatedJob=node",
                                                   "container=node")]
    docs = render(sets=["jobs.planets.kind=TrainJob", *own])
    assert not objects(docs, "TrainingRuntime")  # a runtime of the user's own: referenced, no doctor
    assert trainjobs(docs)["planets"]["spec"]["runtimeRef"]["name"] == "team-torch"


def test_trainjob_crd_catches_a_wrong_field() -> None:
    job = trainjobs(render([TRAINJOB_VALUES]))["planets"]
    job["spec"]["trainer"]["numNodes"] = "two"
    assert list(jsonschema.Draft7Validator(load_crd_schema("trainer.kubeflow.org_trainjobs.yaml")).iter_errors(job))


def _trainer_containers(docs: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(grace period, trainer container) of every trainer pod: PyTorchJob replicas and TrainJob nodes."""
    pods = [p for d in docs for p in pod_specs(d)] + [trainjob_pod(d)["spec"] for d in objects(docs, "TrainJob")]
    trainers = [(p, p["containers"][0]) for p in pods if p["containers"][0]["command"] == ["astrobio-train"]]
    return [(p["terminationGracePeriodSeconds"], c) for p, c in trainers]


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_shutdown_timeout_fits_in_the_grace_period(values: Path) -> None:
    """ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS is the grace period less 30 s: the checkpoint finishes before SIGKILL."""
    for grace, container in _trainer_containers(render([values])):
        timeout = int(env_of(container)["ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS"])
        assert 0 < timeout == grace - 30 < grace


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
def test_shutdown_timeout_follows_the_grace_period(kind: str) -> None:
    sets = [f"jobs.planets.kind={kind}", "jobs.planets.terminationGracePeriodSeconds=900"]
    found = _trainer_containers(render(sets=sets))
    assert len(found) == (2 if kind == "PyTorchJob" else 1)
    for grace, container in found:
        assert grace == 900 and env_of(container)["ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS"] == "870"


@pytest.mark.slow
def test_trainjob_manifest_trains_with_pet_env_only(tmp_path: Path, data_root: Path) -> None:
    """manifests/planets-trainjob.yaml run as Trainer v2 runs it: one process per node, only PET_* injected."""
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    (job,) = objects(docs, "TrainJob")
    configmaps = {d["metadata"]["name"]: d["data"] for d in objects(docs, "ConfigMap")}
    nodes, nproc = job["spec"]["trainer"]["numNodes"], job["spec"]["trainer"]["numProcPerNode"]
    master_port = free_port()
    started = []
    for node in range(nodes):
        pod = Pod(
            trainjob_pod(job)["spec"], configmaps, tmp_path / f"node-{node}", {"astrobio-train-data": tmp_path / "pvc"}
        )
        pod.configure_run(
            data_root,
            free_port(),
            **{
                "train.max_steps": 20,
                "train.eval_every": 10,
                "checkpoint.every_steps": 10,
                "logging.metrics_linger_seconds": 0,
            },
        )
        # torch plugin of Kubeflow Trainer v2.3: PET_* only (no MASTER_ADDR, RANK or WORLD_SIZE)
        env = {
            "PET_NNODES": str(nodes),
            "PET_NPROC_PER_NODE": str(nproc),
            "PET_NODE_RANK": str(node),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(master_port),
        }
        started.append((pod, pod.start(env)))
    for pod, proc in started:
        code, out = pod.wait(proc)
        assert code == 0, out[-3000:]
    run_name = yaml.safe_load(next(iter(configmaps.values()))["config.yaml"])["logging"]["run_name"]
    assert re.search(r"world size\W+2", (tmp_path / "pvc" / "runs" / run_name / "report.md").read_text())
