"""Run a rendered pod's container on this machine: mounts become folders, the operator's env is injected."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import BIN, cli_env

RUN_CONFIG = "/etc/astrobio/config.yaml"


def operator_env(replica: str, index: int, nodes: int, nproc: int, master_port: int) -> dict[str, str]:
    """What training-operator v1.9 injects into a PyTorchJob pod; the master Service name becomes 127.0.0.1."""
    rank = 0 if replica == "Master" else index + 1
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port)}
    return {
        **master,
        **{f"PET_{k}": v for k, v in master.items()},
        "WORLD_SIZE": str(nodes * nproc),
        "RANK": str(rank),
        "PET_NNODES": str(nodes),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(nproc),
        "PYTHONUNBUFFERED": "1",
    }


class Pod:
    """One replica's container with its volumes mapped to host folders under ROOT (shared ones passed in)."""

    def __init__(
        self, pod_spec: dict[str, Any], configmaps: dict[str, dict[str, str]], root: Path, shared: dict[str, Path]
    ) -> None:
        self.container = pod_spec["containers"][0]
        self.log = root / "container.log"
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        self.mounts: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                host = root / mount["name"]
                host.mkdir(parents=True)
                for key, text in configmaps[volume["configMap"]["name"]].items():
                    (host / key).write_text(text)
            elif "persistentVolumeClaim" in volume:
                host = shared[volume["persistentVolumeClaim"]["claimName"]]
            elif volume.get("emptyDir", {}).get("medium") == "Memory":
                continue  # /dev/shm exists on this machine too
            else:
                host = root / mount["name"]
                host.mkdir(parents=True)
            self.mounts[mount["mountPath"]] = host

    def local(self, path: str) -> str:
        """A container path on this machine."""
        for mount, host in self.mounts.items():
            if path == mount or path.startswith(mount + "/"):
                return str(host) + path[len(mount) :]
        return path

    def edit_config(self, path: str, **changes: Any) -> None:
        """Change keys (`section.key`) of a YAML file in a mounted ConfigMap, as a per-test override."""
        file = Path(self.local(path))
        config = yaml.safe_load(file.read_text())
        for key, value in changes.items():
            section, name = key.split(".")
            config[section][name] = value
        file.write_text(yaml.safe_dump(config))

    def configure_run(self, data_root: Path, metrics_port: int, **changes: Any) -> None:
        """Point the mounted run config at this machine: the data root, the run folder on the mapped PVC, a
        metrics port of its own (pods have their own network namespace, these processes share one), CHANGES."""
        config = yaml.safe_load(Path(self.local(RUN_CONFIG)).read_text())
        run_dir = self.local(config["logging"]["run_dir"])
        self.edit_config(
            RUN_CONFIG,
            **{
                "data.root": str(data_root),
                "logging.run_dir": run_dir,
                "logging.metrics_port": metrics_port,
                **changes,
            },
        )

    def start(self, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start the container's command and args with its env (values only) plus EXTRA_ENV; output to self.log."""
        command = shutil.which(self.container["command"][0], path=str(BIN))
        assert command, self.container["command"]
        env = cli_env(**{e["name"]: self.local(e["value"]) for e in self.container["env"] if "value" in e})
        env.update(extra_env)
        argv = [command, *(self.local(a) for a in self.container.get("args", []))]  # the binary is this checkout's
        with self.log.open("wb") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
        """Exit code and output of the started container."""
        return proc.wait(timeout=timeout), self.log.read_text()


def replica_pods(docs: list[dict[str, Any]], root: Path) -> list[tuple[str, int, Pod]]:
    """(replica type, index, Pod) for every replica of the first PyTorchJob in DOCS; they share one PVC folder."""
    job = next(d for d in docs if d["kind"] == "PyTorchJob")
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    specs = job["spec"]["pytorchReplicaSpecs"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: root / "pvc"
        for v in specs["Master"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    replicas = [("Master", 0)] + [("Worker", i) for i in range(specs.get("Worker", {}).get("replicas", 0))]
    return [
        (kind, i, Pod(specs[kind]["template"]["spec"], configmaps, root / f"{kind}-{i}", claims))
        for kind, i in replicas
    ]
