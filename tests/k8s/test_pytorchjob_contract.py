"""manifests/planets-job.yaml run as the operator runs it: a Master and a Worker process, gloo, world size 2."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.k8s.pods import Pod, operator_env, replica_pods

MANIFEST = REPO / "manifests" / "planets-job.yaml"


def load_job() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def start_job(tmp_path: Path, data_root: Path, **changes: Any) -> list[tuple[Pod, int, Any]]:
    """Start every replica of the job; returns (pod, metrics port, process) per replica."""
    docs = load_job()
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    pods = replica_pods(docs, tmp_path)
    nproc = int(job["spec"]["nprocPerNode"])
    master_port = free_port()
    started = []
    for replica, index, pod in pods:
        port = free_port()
        pod.configure_run(data_root, port, **changes)
        started.append((pod, port, pod.start(operator_env(replica, index, len(pods), nproc, master_port))))
    return started


def scrape_rank(port: int) -> str | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    match = re.search(r'astrobio_train_step\{[^}]*rank="(\d+)"[^}]*\} [1-9]', text)
    return match.group(1) if match else None


SHORT = {
    "train.max_steps": 30,
    "train.eval_every": 10,
    "checkpoint.every_steps": 10,
    "train.log_every": 5,
    "logging.metrics_linger_seconds": 4,
}


@pytest.mark.slow
def test_planets_job_trains_with_world_size_two(tmp_path: Path, data_root: Path) -> None:
    docs = load_job()
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    started = start_job(tmp_path, data_root, **SHORT)
    ranks: dict[int, str] = {}
    while any(proc.poll() is None for _, _, proc in started) and len(ranks) < len(started):
        for _pod, port, _proc in started:
            rank = ranks.get(port) or scrape_rank(port)
            time.sleep(0.1)
            if rank is not None:
                ranks[port] = rank
    for pod, _port, proc in started:
        code, out = pod.wait(proc)
        assert code == 0, out[-3000:]
    assert sorted(ranks.values()) == ["0", "1"], "each pod serves its own rank on its metrics port"
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.yaml"]
    run_name = yaml.safe_load(config)["logging"]["run_name"]
    run = tmp_path / "pvc" / "runs" / run_name
    assert re.search(r"world size\W+2", (run / "report.md").read_text())
    last = max((run / "checkpoints").glob("step-*"))
    assert int(last.name.split("-")[1]) == 30
    assert {p.name for p in last.glob("__*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}, "one shard per rank"


@pytest.mark.slow
def test_divergence_exit_code_reaches_the_operator(tmp_path: Path, data_root: Path) -> None:
    """Exit 3 (not a launcher's 1) leaves the pod, so restartPolicy ExitCode fails the job without retrying."""
    changes = {**SHORT, "train.inject_nan_at_step": 5, "logging.metrics_linger_seconds": 0}
    started = start_job(tmp_path, data_root, **changes)
    for pod, _port, proc in started:
        code, out = pod.wait(proc)
        assert code == 3, out[-3000:]
        assert "non-finite loss at step 5" in out
