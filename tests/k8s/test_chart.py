"""The Helm chart: lint, render every scenario, validate every object, reject bad values, document every key."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO, require_tool
from tests.k8s.chart import (
    CHART,
    CRDS,
    SCENARIOS,
    helm,
    load_crd_schema,
    objects,
    pod_specs,
    render,
    rules_spec,
    template_args,
    trainjob_pod,
)

KUBERNETES_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
CUSTOM = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
}
CRD_SHA256 = {
    "kubeflow.org_pytorchjobs.yaml": "8b8a8a719cc94173169290251e817f7ac2bb425c20b6c2fa813397bcf4e932ed",
    "monitoring.coreos.com_podmonitors.yaml": "45a93443daa687d3654f7e9631909ff7edcdf3ec09c5e60251b74aa2722aee5d",
    "monitoring.coreos.com_prometheusrules.yaml": "78be98554b9c8506ab2b4f4feb91c5f3a56e536a0a510f3a8e876a459970d56d",
    "trainer.kubeflow.org_trainjobs.yaml": "a742cafc5b5582640c7e0b7467c024fc237256fbca5ba0a9f0531dfb66d64416",
    "trainer.kubeflow.org_trainingruntimes.yaml": "69b8dbdf60a18e28cddcc2b8dfc4ce72a943e14b531b9389d593118faee4919f",
}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# every trainable component: its job preset (disabled by default beside planets) and the data job feeding it
COMPONENT_JOBS = {"graph-vae": "molecules", "spectrum": "spectra-sim", "datacube": "exoplasim-sweep",
                  "metabolic-links": "metabolic"}
RESTRICTED_VOLUMES = {
    "configMap",
    "emptyDir",
    "persistentVolumeClaim",
    "secret",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
}


@pytest.fixture(scope="module")
def scenarios() -> dict[str, list[dict[str, Any]]]:
    """Every ci/*.yaml scenario rendered once."""
    return {path.stem: render([path]) for path in SCENARIOS}


def all_objects(scenarios: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, docs in scenarios.items() for doc in docs]


def test_scenarios_cover_every_kind(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {doc["kind"] for _, doc in all_objects(scenarios)}
    assert kinds >= {
        "PyTorchJob",
        "TrainJob",
        "CronJob",
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("values", SCENARIOS, ids=lambda p: p.stem)
def test_lint_strict(values: Path) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", str(values)).stdout
    assert "0 chart(s) failed" in out


def test_chart_packages(tmp_path: Path) -> None:
    """`helm package` builds the archive users install from, with the dashboards and without the ci scenarios."""
    helm("package", str(CHART), "-d", str(tmp_path))
    (archive,) = tmp_path.glob("astrobio-train-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {
        "astrobio-train/dashboards/training.json",
        "astrobio-train/values.schema.json",
        "astrobio-train/README.md",
    } <= names
    assert not any("/ci/" in name for name in names)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_objects_validate(scenarios: dict[str, list[dict[str, Any]]], version: str) -> None:
    """Built-in kinds against the official Kubernetes schemas, strict (unknown fields are errors)."""
    errors = []
    for name, doc in all_objects(scenarios):
        if doc["kind"] in CUSTOM:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_crd_copies_are_the_provenance_files() -> None:
    for filename, digest in CRD_SHA256.items():
        assert hashlib.sha256((CRDS / filename).read_bytes()).hexdigest() == digest, filename
        assert digest in (CRDS / "PROVENANCE.md").read_text()


def test_custom_objects_validate_against_crds(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    validators = {kind: jsonschema.Draft7Validator(load_crd_schema(f)) for kind, f in CUSTOM.items()}
    seen, errors = set(), []
    for name, doc in all_objects(scenarios):
        if doc["kind"] in validators:
            seen.add(doc["kind"])
            errors += [
                f"{name}: {doc['kind']}: {e.message} at {list(e.path)}"
                for e in validators[doc["kind"]].iter_errors(doc)
            ]
    assert seen == set(CUSTOM)
    assert not errors, "\n".join(errors)


def test_crd_validation_catches_a_wrong_field() -> None:
    """The CRD check itself can fail: a replica count given as a string is refused."""
    doc = objects(render(), "PyTorchJob")[0]
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert list(jsonschema.Draft7Validator(load_crd_schema(CUSTOM["PyTorchJob"])).iter_errors(doc))


def test_pytorchjob_webhook_rules(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    """What the operator's webhook checks and the CRD schema does not."""
    for name, doc in all_objects(scenarios):
        if doc["kind"] != "PyTorchJob":
            continue
        job = doc["metadata"]["name"]
        assert DNS_1035.match(job) and len(job) <= 48, f"{name}: {job}"
        replicas = doc["spec"]["pytorchReplicaSpecs"]
        assert set(replicas) <= {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
        for spec in replicas.values():
            assert spec["restartPolicy"] in {"Always", "OnFailure", "Never", "ExitCode"}
            container = spec["template"]["spec"]["containers"][0]
            assert container["name"] == "pytorch"
            assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in container["ports"]


def test_pod_security_restricted(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    """Every pod meets Pod Security "restricted"."""
    checked = 0
    for name, doc in all_objects(scenarios):
        for pod in pod_specs(doc):
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            checked += 1
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
            assert pod["automountServiceAccountToken"] is False, where
            for volume in pod["volumes"]:
                assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, f"{where}: {volume}"
            for container in pod["containers"] + pod.get("initContainers", []):
                ctx = container["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False, where
                assert ctx["readOnlyRootFilesystem"] is True, where
                assert ctx["capabilities"] == {"drop": ["ALL"]}, where
                assert ctx.get("privileged") is not True and ctx["runAsUser"] > 0, where
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"
    assert checked >= 10


def test_no_secret_values(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    """The chart renders no Secret, and credentials in env come only from Secret references."""
    for name, doc in all_objects(scenarios):
        assert doc["kind"] != "Secret", name
        for pod in pod_specs(doc):
            for env in pod["containers"][0]["env"]:
                if re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{name}: {env}"


BAD_VALUES = [
    ("jobs.planets.gpusPerNode=-1", "/jobs/planets/gpusPerNode"),
    ("jobs.planets.strategy=horovod", "/jobs/planets/strategy"),
    ("images.trainer.repository=", "/images/trainer/repository"),
    ("jobs.planets.workerz=2", "workerz"),
    ("jobs.Planets_1.component=planets", "Planets_1"),
    ("dataJobs.kegg.source=arxiv", "/dataJobs/kegg/source"),
    (
        "monitoring.prometheusRule.alerts.AstrobioGPUMemoryNearFull.severity=page",
        "/monitoring/prometheusRule/alerts/AstrobioGPUMemoryNearFull/severity",
    ),
    ("monitoring.prometheusRule.alerts.AstrobioDataWaitHigh.fro=5m", "fro"),
    ("jobs.planets.restartPolicy=Sometimes", "/jobs/planets/restartPolicy"),
    ("jobs.extra.strategy=ddp", "jobs.extra.component is required"),
    (
        "fullnameOverride=a-very-long-release-name-x,jobs.planets-with-a-long-name.component=planets",
        "longer than 48 characters",
    ),
    ("dataJobs.kegg.schedule=every day", "expected 5 cron fields"),
    ("storage.pvc.enabled=false", "checkpoints would be lost with the pod"),
    ("storage.runRoot=/var/runs", "checkpoints would be lost with the pod"),
    ("storage.runRoot=runs", "/storage/runRoot"),
    ("jobs.planets.strategy=none", "strategy none cannot run 2 nodes x 1 processes"),
    ("jobs.planets.kind=MPIJob", "/jobs/planets/kind"),
    ("jobs.planets.terminationGracePeriodSeconds=45", "/jobs/planets/terminationGracePeriodSeconds"),
    ("jobs.planets.extraEnv[0].name=ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS", "/jobs/planets/extraEnv/0/name"),
    ("jobs.planets.extraEnv[0].name=PET_NNODES", "/jobs/planets/extraEnv/0/name"),
    ("jobs.planets.trainJob.runtimeRef.kind=Runtime", "/jobs/planets/trainJob/runtimeRef/kind"),
    ("jobs.planets.kind=TrainJob,jobs.planets.schedulerName=volcano", "schedulerName is not a TrainJob field"),
]


@pytest.mark.parametrize(("setting", "expected"), BAD_VALUES, ids=[b[0].split("=")[0] for b in BAD_VALUES])
def test_bad_values_rejected(setting: str, expected: str) -> None:
    """Schema and template checks refuse bad values with a line that names the offending key."""
    proc = helm(*template_args(sets=[setting]), check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert any(expected in line for line in proc.stderr.splitlines()), proc.stderr


def _documented(values_text: str, schema: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(keys without a `# --` comment, keys the schema does not declare), walking values.yaml's nodes."""
    lines = values_text.splitlines()
    missing, undeclared = [], []

    def has_doc(line: int) -> bool:
        i = line - 1
        while i >= 0 and lines[i].strip().startswith("#"):
            if lines[i].strip().startswith("# --"):
                return True
            i -= 1
        return False

    def walk(node: yaml.MappingNode, node_schema: dict[str, Any], path: str) -> None:
        for key_node, value_node in node.value:
            key = f"{path}.{key_node.value}".lstrip(".")
            child = node_schema.get("properties", {}).get(key_node.value)
            extra = node_schema.get("additionalProperties")
            if child is None and isinstance(extra, dict):
                child = extra
            if child is None:
                undeclared.append(key)
                continue
            if not has_doc(key_node.start_mark.line):
                missing.append(key)
            nested = child.get("additionalProperties")
            structured = "properties" in child or (isinstance(nested, dict) and "properties" in nested)
            if structured and isinstance(value_node, yaml.MappingNode):
                walk(value_node, child, key)

    walk(yaml.compose(values_text), schema, "")
    return missing, undeclared


def test_every_value_documented_and_declared() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing, undeclared = _documented((CHART / "values.yaml").read_text(), schema)
    assert not missing, f"keys without a `# --` comment: {missing}"
    assert not undeclared, f"keys values.schema.json does not declare: {undeclared}"
    # the check can fail: a key without its comment is reported
    assert _documented("a: 1\n", {"properties": {"a": {"type": "integer"}}}) == (["a"], [])


def test_notes_say_how_to_watch_the_job(tmp_path: Path) -> None:
    """NOTES.txt rendered with the release context (a template in a copy of the chart includes it)."""
    chart = tmp_path / "astrobio-train"
    shutil.copytree(CHART, chart)
    (chart / "notes.tpl").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: |\n  {{- tpl (.Files.Get "notes.tpl") . | nindent 2 }}\n'
    )
    out = helm("template", "astrobio-train", str(chart), "-n", "astrobio", "-s", "templates/zz-notes.yaml").stdout
    notes = yaml.safe_load(out)["notes"]
    assert "kubectl -n astrobio get pytorchjob astrobio-train-planets -w" in notes
    assert "logs -f astrobio-train-planets-master-0" in notes
    assert "2 node(s) x 1 process(es)" in notes
    assert "create secret generic astrobio-s3" in notes


def test_manifests_are_rendered_from_the_chart(tmp_path: Path) -> None:
    """manifests/ equals what `make manifests` renders now: a chart change without re-rendering fails here."""
    require_tool("helm")
    subprocess.run(
        ["bash", str(REPO / "charts" / "render-manifests.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    names = {
        "llm-job.yaml",
        "planets-job.yaml",
        "planets-trainjob.yaml",
        "data-cronjobs.yaml",
        "monitoring.yaml",
        "planets-tune-job.yaml",
        *(f"{component}-job.yaml" for component in COMPONENT_JOBS),
    }
    assert {p.name for p in tmp_path.iterdir()} == names
    for name in sorted(names):
        assert (REPO / "manifests" / name).read_text() == (tmp_path / name).read_text(), (
            f"manifests/{name} drifted from the chart: run `make manifests`"
        )


@pytest.mark.parametrize(
    "name",
    ["planets-job.yaml", "planets-trainjob.yaml", "llm-job.yaml", "data-cronjobs.yaml"]
    + [f"{component}-job.yaml" for component in COMPONENT_JOBS],
)
def test_manifests_are_self_contained(name: str) -> None:
    """Each manifest applies as-is: what its pods reference (ServiceAccount, ConfigMap, PVC) is in the file."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / name).read_text()) if d]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all(d["metadata"]["namespace"] == "astrobio" for d in docs)
    for doc in docs:
        trainjob = [trainjob_pod(doc)["spec"]] if doc["kind"] == "TrainJob" else []
        for pod in pod_specs(doc) + trainjob:
            assert ("ServiceAccount", pod["serviceAccountName"]) in present
            for volume in pod["volumes"]:
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in present
                if "persistentVolumeClaim" in volume:
                    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in present


def _run_configs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["astrobio.io/job"]: yaml.safe_load(d["data"]["config.yaml"])
        for d in objects(docs, "ConfigMap")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
    }


PRESET_CONFIGS = {"graph-vae": "graph-vae-qm9", "spectrum": "spectrum", "datacube": "datacube",
                  "metabolic-links": "metabolic-links"}
# keys a preset may set differently from its configs/ file: those the chart fills in, the pod's device, linger
PRESET_OWN_KEYS = {"component", "logging.run_dir", "logging.run_name", "logging.metrics_port",
                   "logging.metrics_linger_seconds", "train.device"}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("job", sorted(PRESET_CONFIGS))
def test_component_presets_mirror_their_config_files(job: str) -> None:
    """A preset's run config is its configs/ file (a config change there must reach the chart's job too)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    preset = _flat(values["jobs"][job]["config"])
    config = _flat(yaml.safe_load((REPO / "configs" / f"{PRESET_CONFIGS[job]}.yaml").read_text()))
    differ = {k: (config.get(k), preset.get(k)) for k in set(preset) | set(config)
              if k not in PRESET_OWN_KEYS and config.get(k) != preset.get(k)}
    assert not differ, f"jobs.{job}.config differs from configs/{PRESET_CONFIGS[job]}.yaml (file, chart): {differ}"


def test_run_config_keys_the_chart_owns() -> None:
    docs = render(sets=["jobs.llm.enabled=true"])
    configs = _run_configs(docs)
    assert set(configs) == {"planets", "llm"}
    jobs = {d["metadata"]["labels"]["astrobio.io/job"]: d for d in objects(docs, "PyTorchJob")}
    for name, cfg in configs.items():
        container = jobs[name]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert cfg["logging"]["metrics_port"] == ports["metrics"] == 9400
        assert cfg["logging"]["run_dir"] == "/mnt/astrobio/runs"
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/mnt/astrobio", "/etc/astrobio", "/dev/shm"}
        assert cfg["logging"]["run_name"] == jobs[name]["metadata"]["name"]
        assert cfg["data"]["root"] == "s3://astrobio"
        assert cfg["component"] == name
    assert configs["llm"]["distributed"]["strategy"] == "fsdp"
    assert configs["planets"]["distributed"]["strategy"] == "ddp"


@pytest.mark.parametrize("job", ["planets", "llm"])
def test_run_config_is_valid_for_the_trainer(job: str, tmp_path: Path) -> None:
    """The ConfigMap's config.yaml passes `astrobio-train validate` (pydantic config and the component's model)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_run_configs(render(sets=[f"jobs.{job}.enabled=true"]))[job]))
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "validate", "-c", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"component: {job}" in proc.stdout


def test_gpu_job_resources_processes_and_ports() -> None:
    """2 nodes x 8 GPUs: the GPU limit, 8 local ranks, 8 metrics ports the PodMonitor and NetworkPolicy cover."""
    docs = render([CHART / "ci" / "llm-fsdp-values.yaml"])
    job = objects(docs, "PyTorchJob")[0]
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"] == ["astrobio-train"]
    assert container["args"][-1] == "--nproc-per-node=8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] > 300
    metrics = {p["name"]: p["containerPort"] for p in container["ports"] if p["name"] != "pytorchjob-port"}
    assert sorted(metrics.values()) == list(range(9400, 9408))
    monitor = objects(docs, "PodMonitor")[0]["spec"]["podMetricsEndpoints"][0]
    keep = next(r for r in monitor["relabelings"] if r["action"] == "keep")
    assert all(re.fullmatch(keep["regex"], name) for name in metrics)
    assert not re.fullmatch(keep["regex"], "pytorchjob-port")
    trainer_policy = next(p for p in objects(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-trainer"))
    scrape = trainer_policy["spec"]["ingress"][1]["ports"][0]
    assert (scrape["port"], scrape["endPort"]) == (9400, 9407)


def test_optional_branches() -> None:
    """PVC without S3, elastic policy, Kueue/Volcano, digest pinning, IRSA, extra env and args, run ids."""
    docs = render([CHART / "ci" / "pvc-elastic-values.yaml"])
    jobs = {d["metadata"]["name"]: d for d in objects(docs, "PyTorchJob")}
    assert set(jobs) == {"astrobio-train-planets-20260401", "astrobio-train-elastic"}
    planets = jobs["astrobio-train-planets-20260401"]
    assert planets["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-astro"
    assert planets["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "astro"}
    pod = planets["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["schedulerName"] == "volcano" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    container = pod["containers"][0]
    assert container["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    assert container["args"][-2:] == ["--set", "train.max_steps=100"]
    assert not any(e["name"].startswith("AWS_") for e in container["env"])
    elastic = jobs["astrobio-train-elastic"]["spec"]
    assert elastic["elasticPolicy"]["maxReplicas"] == 4 and elastic["nprocPerNode"] == "2"
    assert "ttlSecondsAfterFinished" not in elastic["runPolicy"]
    assert objects(docs, "PersistentVolumeClaim")[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    sa = objects(docs, "ServiceAccount")[0]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    cron = next(c for c in objects(docs, "CronJob") if c["metadata"]["name"].endswith("-text"))
    cron_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {v["name"] for v in cron_pod["volumes"]} == {"tmp", "data"}


def test_no_pvc_mode_keeps_runs_on_object_storage(tmp_path: Path) -> None:
    """storage.pvc.enabled=false with an s3:// runRoot: no claim, no data volume, the run folder and the S3
    credentials (from the Secret) reach every trainer process, and the trainer accepts the rendered config."""
    docs = render([CHART / "ci" / "no-pvc-values.yaml"])
    assert not objects(docs, "PersistentVolumeClaim")
    (job,) = objects(docs, "PyTorchJob")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert all("persistentVolumeClaim" not in v for v in pod["volumes"]), pod["volumes"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://rgw.storage.svc:7480"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "astrobio-s3"
    (config_map,) = [c for c in objects(docs, "ConfigMap") if c["metadata"]["name"].endswith("-config")]
    run_config = yaml.safe_load(next(iter(config_map["data"].values())))
    assert run_config["logging"]["run_dir"] == "s3://astrobio/runs"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config))
    from trainer.config import load_config

    assert load_config(path).logging.run_dir == "s3://astrobio/runs"


def test_datajob_cronjob_contract() -> None:
    docs = render([CHART / "ci" / "datajobs-values.yaml"])
    crons = {c["metadata"]["labels"]["astrobio.io/source"]: c for c in objects(docs, "CronJob")}
    assert set(crons) == {"nasa-exoplanets", "exoplanet-catalogue", "kegg", "ncbi", "mast"}
    for source, cron in crons.items():
        spec = cron["spec"]
        assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
        job = spec["jobTemplate"]["spec"]
        assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [1, 2]
        container = job["template"]["spec"]["containers"][0]
        assert [container["command"][0], *container["args"]] == [
            "astrobio-data",
            "run",
            source,
            "--root",
            "s3://astrobio",
        ]
        env = {e["name"]: e for e in container["env"]}
        assert env["PUSHGATEWAY_URL"]["value"].startswith("http://")
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "astrobio-s3"
    assert not objects(docs, "PyTorchJob") and not objects(docs, "PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("schedule", "seconds"),
    [
        ("*/15 * * * *", 2 * 900),
        ("@hourly", 2 * 3600),
        ("0 */6 * * *", 2 * 6 * 3600),
        ("17 3 * * *", 2 * 86400),
        ("0 3,15 * * *", 2 * 86400),
        ("41 4 * * 0", 2 * 7 * 86400),
        ("0 3 1 * *", 2 * 31 * 86400),
        ("0 0 1 1 *", 2 * 366 * 86400),
    ],
)
def test_staleness_alert_is_twice_the_schedule(schedule: str, seconds: int) -> None:
    docs = render(sets=["dataJobs.kegg.schedule=" + schedule.replace(",", "\\,")])
    (group,) = [g for g in rules_spec(docs)["groups"] if g["name"] == "astrobio-train.datajobs"]
    rules = group["rules"]
    stale = [r for r in rules if r["alert"] == "AstrobioDataJobStale" and r["labels"]["source"] == "kegg"]
    assert len(stale) == 1
    assert f"> {seconds}) or absent_over_time(" in stale[0]["expr"]
    assert stale[0]["expr"].endswith(f"[{seconds}s])")


def test_llm_job_fits_its_gpus_per_the_planner(tmp_path: Path) -> None:
    """The rendered LLM job (FSDP ZeRO-3 on nodes x GPUs of 80 GiB) fits by `astrobio-train plan`."""
    docs = render([CHART / "ci" / "llm-fsdp-values.yaml"])
    job = objects(docs, "PyTorchJob")[0]
    nodes = 1 + job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"]
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_run_configs(docs)["llm"]))
    args = ["plan", "-c", str(config), "--gpus", str(nodes * gpus), "--gpu-mem", "80GiB", "--gpus-per-host", str(gpus)]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"fsdp-z3\s+fsdp \(ZeRO-3\): fits", proc.stdout), proc.stdout[-2000:]


def test_monitoring_objects_need_the_prometheus_operator_api() -> None:
    """Without monitoring.coreos.com/v1 in the cluster, install still works: no PodMonitor or PrometheusRule."""
    kinds = {d["kind"] for d in render(monitoring=False)}
    assert "PyTorchJob" in kinds and not kinds & {"PodMonitor", "PrometheusRule"}
    disabled = render(
        sets=[
            "monitoring.podMonitor.enabled=false",
            "monitoring.prometheusRule.enabled=false",
            "monitoring.dashboards.enabled=false",
        ]
    )
    assert not [
        d
        for d in disabled
        if d["kind"] in {"PodMonitor", "PrometheusRule"} or "grafana_dashboard" in d["metadata"].get("labels", {})
    ]


@pytest.mark.parametrize("component", sorted(COMPONENT_JOBS))
def test_every_component_has_a_preset_and_its_data_job(component: str) -> None:
    """Each component's job preset is off by default and renders with its data job; simulations are Jobs."""
    defaults = render()
    assert not [d for d in objects(defaults, "PyTorchJob") if d["metadata"]["name"].endswith(f"-{component}")]
    docs = render([CHART / "ci" / f"{component}-values.yaml"])
    (job,) = objects(docs, "PyTorchJob")
    assert job["metadata"]["name"] == f"astrobio-train-{component}"
    assert _run_configs(docs)[component]["component"] == component
    (data,) = objects(docs, "Job")
    assert data["metadata"]["labels"]["astrobio.io/source"] == COMPONENT_JOBS[component]
    assert not objects(docs, "CronJob")
    indexed = data["spec"]["completionMode"] == "Indexed"
    assert indexed == (component == "datacube")
    assert data["spec"]["completions"] == (9 if indexed else 1)  # datacube: 8 shares of the design + publish
    stale = [r for g in rules_spec(docs)["groups"] for r in g["rules"]]
    assert not [r for r in stale if r.get("alert") == "AstrobioDataJobStale"], "a one-off Job has no schedule"


def test_indexed_job_parallelism_from_values() -> None:
    docs = render(sets=["dataJobs.exoplasim-sweep.enabled=true", "dataJobs.exoplasim-sweep.parallelism=3"])
    (job,) = objects(docs, "Job")
    assert (job["spec"]["parallelism"], job["spec"]["completionMode"]) == (3, "Indexed")
    proc = helm(
        *template_args(sets=["dataJobs.spectra-sim.enabled=true", "dataJobs.spectra-sim.schedule=@daily"]), check=False
    )
    assert proc.returncode != 0 and "kind is Job" in proc.stderr


def test_readme_values_table_is_generated() -> None:
    """charts/astrobio-train/README.md holds the table charts/gen-readme.py writes from values.yaml now."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "charts" / "gen-readme.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    gpu = "monitoring.prometheusRule.alerts.AstrobioGPUMemoryNearFull.params"
    assert f'| `{gpu}` | object | `{{"ratio": 0.95}}` |' in readme
    assert all(f"| `{key}` |" in readme for key in schema["properties"] if key != "global")
    # the check can fail: a values.yaml with one more documented key renders a different table
    spec = importlib.util.spec_from_file_location("gen_readme", REPO / "charts" / "gen-readme.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    values = (CHART / "values.yaml").read_text()
    assert gen.render(readme, values) == readme
    assert gen.render(readme, values + "# -- A new key.\nnewKey: 1\n") != readme


def test_exoplasim_sweep_is_an_indexed_job_sharing_its_cache_on_the_pvc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's Indexed Job: its rendered --config is one the source accepts, with count = completions - 1 and
    the run cache on the PVC every index mounts; index i < count runs share i, the last index publishes."""
    from datajobs.sources.exoplasim_sweep import Config, share_of

    docs = render(sets=["dataJobs.exoplasim-sweep.enabled=true"])
    (job,) = [d for d in objects(docs, "Job") if d["metadata"]["labels"].get("astrobio.io/source") == "exoplasim-sweep"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 2 and spec["parallelism"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    config_file = Path(container["args"][container["args"].index("--config") + 1])
    configmaps = {d["metadata"]["name"]: d for d in objects(docs, "ConfigMap")}
    data = configmaps[mounts[str(config_file.parent)]["configMap"]["name"]]["data"][config_file.name]
    sweep = Config(**yaml.safe_load(data)["exoplasim-sweep"])
    assert sweep.count == spec["completions"] - 1
    (claim_mount,) = [path for path, volume in mounts.items() if "persistentVolumeClaim" in volume]
    assert str(sweep.cache_dir).startswith(claim_mount + "/")
    roles = []
    for index in range(spec["completions"]):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        roles.append(share_of(sweep))
    assert roles == [(i, sweep.count) for i in range(sweep.count + 1)]
