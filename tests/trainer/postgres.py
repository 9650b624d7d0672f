"""A real PostgreSQL server for the tests: initdb + pg_ctl on 127.0.0.1, a free port, a temp folder."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require_tool

DB_USER = "astrobio"


def _server_user() -> str | None:
    """The account initdb runs as: None for a non-root user, else `postgres` (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return "postgres"


def _run(cmd: list[str], user: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL cluster, stopped and removed after the session."""
    initdb, pg_ctl = require_tool("initdb"), require_tool("pg_ctl")
    user = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="astrobio-pg-"))
    if user is not None:
        shutil.chown(folder, user)
    data, port = folder / "data", free_port()
    _run([initdb, "-D", str(data), "-A", "trust", "-U", DB_USER, "--no-sync", "-E", "UTF8"], user)
    options = f"-h 127.0.0.1 -p {port} -k {folder} -F -c max_connections=50"
    _run([pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "-t", "60", "start"],
         user)
    try:
        yield f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/postgres"
    finally:
        _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], user)
        shutil.rmtree(folder, ignore_errors=True)
