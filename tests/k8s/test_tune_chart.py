"""The chart's tune Job and doctor init container: rendered by the real helm, validated, wired to the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.k8s.chart import CHART, helm, objects, pod_specs, render, template_args
from trainer.tune import load_space

TUNE = CHART / "ci" / "tune-values.yaml"
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]


@pytest.fixture(scope="module")
def tune_docs() -> list[dict[str, Any]]:
    return render([TUNE])


def tune_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = objects(docs, "Job")
    return job["spec"]["template"]


def test_tune_job_runs_parallel_workers_on_one_study(tune_docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load(TUNE.read_text())["tune"]
    (job,) = objects(tune_docs, "Job")
    assert job["spec"]["parallelism"] == values["parallelism"] == 2
    assert "completions" not in job["spec"]  # done when a worker finds the study finished and the rest end
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:5] == ["tune", "-c", "/etc/astrobio/config.yaml", "--space", "/etc/astrobio/space.yaml"]
    assert f"--trials={values['trials']}" in args and "--pruner=median" in args
    assert len({a for a in args if a.startswith("--study=")}) == 1  # every worker names the same study
    assert not any(a.startswith("--storage") for a in args)


def test_database_url_comes_from_the_secret_only(tune_docs: list[dict[str, Any]]) -> None:
    (container,) = tune_pod(tune_docs)["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "ASTROBIO_TUNE_STORAGE"]
    assert env == {"name": "ASTROBIO_TUNE_STORAGE",
                   "valueFrom": {"secretKeyRef": {"name": "astrobio-optuna", "key": "url"}}}
    rendered = yaml.safe_dump_all(tune_docs)
    assert "postgresql" not in rendered and "sqlite" not in rendered


def test_rendered_space_and_config_pass_the_cli_checks(tune_docs: list[dict[str, Any]]) -> None:
    """The ConfigMap the workers read is accepted by trainer.tune's own space loader (every key exists)."""
    (cm,) = [d for d in objects(tune_docs, "ConfigMap") if "space.yaml" in d["data"]]
    base = yaml.safe_load(cm["data"]["config.yaml"])
    space_path = Path(__file__).parent / "_rendered-space.yaml"
    try:
        space_path.write_text(cm["data"]["space.yaml"])
        space = load_space(space_path, base)
    finally:
        space_path.unlink(missing_ok=True)
    assert space.metric == "val_loss" and {p.key for p in space.params} >= {"optim.lr", "model.hidden"}
    assert base["distributed"]["strategy"] == "none"  # one trial process per worker pod


def test_tune_pods_have_the_training_pods_security_and_monitoring(tune_docs: list[dict[str, Any]]) -> None:
    planets = objects(render([CHART / "ci" / "planets-cpu-values.yaml"]), "PyTorchJob")[0]
    train_pod = planets["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod = tune_pod(tune_docs)
    assert pod["spec"]["securityContext"] == train_pod["spec"]["securityContext"]
    assert pod["spec"]["containers"][0]["securityContext"] == train_pod["spec"]["containers"][0]["securityContext"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    for key in ("app.kubernetes.io/instance", "app.kubernetes.io/component"):  # what the PodMonitor selects
        assert pod["metadata"]["labels"][key] == train_pod["metadata"]["labels"][key]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports == {"metrics": 9400} and "--metrics-port=9400" in pod["spec"]["containers"][0]["args"]
    (policy,) = [d for d in objects(tune_docs, "NetworkPolicy") if d["metadata"]["name"].endswith("planets-tune")]
    assert policy["spec"]["podSelector"]["matchLabels"]["astrobio.io/tune"] == pod["metadata"]["labels"][
        "astrobio.io/tune"]
    assert any(p["port"] == 5432 for rule in policy["spec"]["egress"] for p in rule["ports"])
    pvcs = {d["metadata"]["name"] for d in objects(tune_docs, "PersistentVolumeClaim")}
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims and claims <= pvcs  # the manifest is self-contained


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_tune_objects_validate_strict(tune_docs: list[dict[str, Any]], version: str) -> None:
    builtin = [d for d in tune_docs if d["kind"] not in ("PodMonitor", "PrometheusRule")]  # CRDs: test_chart.py
    assert {d["kind"] for d in builtin} >= {"Job", "ConfigMap", "NetworkPolicy", "PersistentVolumeClaim"}
    for doc in builtin:
        kubernetes_validate.validate(doc, version, strict=True)


def test_every_training_pod_has_the_doctor_init_container() -> None:
    for values in ("planets-cpu-values.yaml", "llm-fsdp-values.yaml"):
        for job in objects(render([CHART / "ci" / values]), "PyTorchJob"):
            for spec in pod_specs(job):
                (init,) = spec["initContainers"]
                (trainer,) = spec["containers"]
                assert init["name"] == "doctor" and init["args"][:3] == ["doctor", "-c", trainer["args"][2]]
                assert init["args"][3] == next(a for a in trainer["args"] if a.startswith("--nproc-per-node"))
                assert init["resources"] == trainer["resources"]  # GPUs included: the doctor sees them
                assert init["image"] == trainer["image"] and init["volumeMounts"] == trainer["volumeMounts"]
                assert init["securityContext"] == trainer["securityContext"]


def test_doctor_is_switchable() -> None:
    docs = render([CHART / "ci" / "planets-cpu-values.yaml"], sets=["doctor.enabled=false"])
    for job in objects(docs, "PyTorchJob"):
        assert all("initContainers" not in spec for spec in pod_specs(job))
    docs = render([CHART / "ci" / "planets-cpu-values.yaml"], sets=["doctor.extraArgs[0]=--gpu-mem=80GiB"])
    spec = pod_specs(objects(docs, "PyTorchJob")[0])[0]
    assert spec["initContainers"][0]["args"][-1] == "--gpu-mem=80GiB"


@pytest.mark.parametrize(("setting", "expected"), [
    ("tune.job=nope", 'tune.job "nope" is not a key of jobs'),
    ("tune.database.existingSecret=", "tune.database.existingSecret is required"),
    ("tune.pruner=random", "pruner"),
    ("tune.parallelism=0", "parallelism"),
    ("tune.space.metric=test_loss", "metric"),
    ("tune.unknown=1", "unknown"),
])
def test_bad_tune_values_rejected(setting: str, expected: str) -> None:
    proc = helm(*template_args([TUNE], sets=[setting]), check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
