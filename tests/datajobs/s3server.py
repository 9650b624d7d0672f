"""A real S3 server for tests: a one-node Ceph cluster (in-RAM memstore OSD) with the RADOS gateway on 127.0.0.1.

Recipe from ../shared/TOOLS.md; binaries from tests/tools/install-ceph.sh. Start ~15 s, ~300 MB RAM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

ACCESS_KEY = "astroaccesskey"
SECRET_KEY = "astrosecretkey"

CONF = """[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
osd_objectstore = memstore
memstore_device_bytes = 1073741824
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 1
mon_data_avail_crit = 0
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = {d}/keyring
[mon]
mon_data = {d}/mon/$id
[osd]
osd_data = {d}/osd/$id
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port}
ms_mon_client_mode = crc
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class CephS3:
    endpoint: str
    directory: Path

    @property
    def env(self) -> dict[str, str]:
        """What s3fs/botocore read: endpoint and keys from the environment only (docs/contracts.md)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        for pid_file in (self.directory / "run").glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def start(directory: Path, bin_dir: str) -> CephS3:
    """Create and start mon, osd and radosgw under `directory`; return once S3 answers."""
    d = directory
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("run", "log", "mon", "osd"):
        (d / sub).mkdir(parents=True)
    mon_port, rgw_port, fsid = free_port(), free_port(), str(uuid.uuid4())
    conf = d / "ceph.conf"
    conf.write_text(CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, d=d))
    env = {**os.environ, "CEPH_CONF": str(conf)}

    def run(*cmd: str) -> str:
        out = subprocess.run([f"{bin_dir}/{cmd[0]}", *cmd[1:]], env=env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()[-500:]}")
        return out.stdout.strip()

    run("ceph-authtool", "--create-keyring", f"{d}/keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
    run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", f"{d}/monmap")
    run("ceph-mon", "--mkfs", "-i", "a", "--monmap", f"{d}/monmap", "--keyring", f"{d}/keyring")
    run("ceph-mon", "-i", "a")
    osd_uuid = str(uuid.uuid4())
    osd_id = run("ceph", "osd", "new", osd_uuid)
    (d / "osd" / osd_id).mkdir(parents=True, exist_ok=True)
    run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
    run("ceph-osd", "-i", osd_id)
    server = CephS3(f"http://127.0.0.1:{rgw_port}", d)
    try:
        _wait(lambda: "1 up" in run("ceph", "osd", "stat"), 60, "the OSD to come up")
        run("radosgw", "-n", "client.rgw.a")
        _wait(lambda: _answers(server.endpoint), 120, "radosgw to answer")
        run(
            "radosgw-admin",
            "user",
            "create",
            "--uid=astro",
            "--display-name=astro",
            f"--access-key={ACCESS_KEY}",
            f"--secret={SECRET_KEY}",
        )
    except Exception:
        server.stop()
        raise
    return server


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
        return True
    except requests.RequestException:
        return False


def _wait(ok, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(1)
    raise RuntimeError(f"timed out waiting for {what}")
