"""A lease on a run folder: one run writes it at a time; a dead holder is taken over once its heartbeat ages.

The lease is `<run>/.lease.json` naming its holder (id, host, pod, pid, since, heartbeat). It is created with
`os.link` of a fully written temp file, which fails when the name exists (atomic on local filesystems and NFS,
no `flock`); a heartbeat thread rewrites it (temp + `os.replace`) every quarter of the timeout. A holder whose
heartbeat is older than the timeout is dead (kill -9, lost node), and so is a holder on this same host and pod
whose process no longer exists (or is a zombie): the next run renames its lease aside (only
one taker can), checks that it moved the lease it judged stale, and links its own. A holder that finds the
lease no longer names it has lost it and must stop without writing.

On an object store (an `s3://` run folder: no link, no rename) the same protocol runs on conditional PUTs: the
lease object is created with `If-None-Match: *` (only if absent), each heartbeat replaces it with `If-Match` on
the ETag this holder last wrote, and a taker replaces a dead holder's lease with `If-Match` on the ETag it read
and judged stale, so of several takers only one succeeds. A heartbeat whose condition fails means another run
replaced the lease: this one has lost it. Ceph RGW 16.2 and AWS S3 honour both conditions (tests/trainer).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from datajobs.errors import DataError
from trainer.runfolder import RunFolder

log = logging.getLogger("astrobio.train")

LEASE_FILE = ".lease.json"


class LeaseHeld(DataError):
    """Another live run holds the run folder (exit 2)."""


class LeaseLost(DataError):
    """This run's lease was taken over (its heartbeat was too old): it stops without writing (exit 2)."""


@dataclass(frozen=True)
class Holder:
    id: str  # 12 hex digits; also names the holder's checkpoint temp folders
    host: str
    pod: str
    pid: int
    since: float
    heartbeat: float

    def describe(self, now: float | None = None) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        age = (now or time.time()) - self.heartbeat
        return (f"pid {self.pid} on host {self.host} (pod {self.pod}) since {since}, "
                f"heartbeat {age:.1f} s ago")


def new_holder_id() -> str:
    return secrets.token_hex(6)


def process_gone(pid: int) -> bool:
    """True when no process has this pid here, or it is a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def parse_holder(data: bytes) -> Holder | None:
    """The holder of a lease record; None when it is not (yet) a complete record."""
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None


def read_holder(path: Path) -> Holder | None:
    """The holder named in a lease file; None when it is absent or not (yet) a complete record."""
    try:
        return parse_holder(path.read_bytes())
    except OSError:
        return None


def read_run_holder(run: RunFolder) -> Holder | None:
    """The holder named in a run folder's lease (local or remote); None when there is none."""
    if not run.remote:
        return read_holder(run.local / LEASE_FILE)
    version = run.read_version(LEASE_FILE)
    return None if version is None else parse_holder(version.data)


def this_process() -> tuple[str, str, int]:
    """The host, pod and pid a lease taken by this process would name."""
    return socket.gethostname(), os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "-", os.getpid()


def stale_reason(holder: Holder, timeout_seconds: float, now: float | None = None) -> str | None:
    """Why a holder is dead, as seen from this process (its heartbeat is older than the timeout, or it ran on
    this host and pod and its process is gone); None while it is live and the lease must be respected."""
    if (now or time.time()) - holder.heartbeat > timeout_seconds:
        return f"older than checkpoint.lease_timeout_seconds={timeout_seconds:g}"
    host, pod, pid = this_process()
    if holder.host == host and holder.pod == pod and holder.pid != pid and process_gone(holder.pid):
        return "its process no longer exists on this host"
    return None


class Lease:
    """Held by rank 0 for the whole run: acquire(), then release() (also when the run fails)."""

    def __init__(self, run_dir: Path | RunFolder, timeout_seconds: float, holder_id: str) -> None:
        self.run = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
        self.path = Path(self.run.url(LEASE_FILE)) if not self.run.remote else None
        self.token = ""  # the ETag of the record this holder last wrote (object stores)
        self.timeout = timeout_seconds
        now = time.time()
        host, pod, pid = this_process()
        self.holder = Holder(id=holder_id, host=host, pod=pod, pid=pid, since=now, heartbeat=now)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        self.holder = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
        return (json.dumps(asdict(self.holder)) + "\n").encode()

    def _temp(self) -> Path:
        record = self._record()
        tmp = self.path.with_name(f"{LEASE_FILE}.{self.holder.id}.tmp")
        with open(tmp, "wb") as f:
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _link(self) -> bool:
        tmp = self._temp()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _held_by(self, other: Holder | None) -> LeaseHeld:
        who = other.describe() if other else "a run whose lease file is being written"
        return LeaseHeld(f"{self.run} is in use by {who}; wait for it to end or use another "
                         f"logging.run_name (a lease whose heartbeat is older than "
                         f"checkpoint.lease_timeout_seconds={self.timeout:g} is taken over)")

    def acquire(self) -> None:
        """Take the lease, or take over a dead holder's; LeaseHeld (exit 2) while a live run holds it."""
        if self.run.remote:
            self._acquire_remote()
            self._start()
            return
        if self._link():
            self._start()
            return
        current = read_holder(self.path)
        if current is None:
            raise self._held_by(current)
        why = stale_reason(current, self.timeout)
        if why is None:
            raise self._held_by(current)
        aside = self.path.with_name(f"{LEASE_FILE}.stale-{self.holder.id}")
        try:
            os.rename(self.path, aside)  # of several takers only one moves it
        except FileNotFoundError:
            raise self._held_by(read_holder(self.path)) from None
        moved = read_holder(aside)
        if moved != current:  # a faster taker's fresh lease, not the stale one: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            raise self._held_by(moved)
        aside.unlink(missing_ok=True)
        if not self._link():
            raise self._held_by(read_holder(self.path))
        log.warning("took over the lease of %s: %s", current.describe(), why)
        self._start()

    def _acquire_remote(self) -> None:
        token = self.run.create(LEASE_FILE, self._record())
        if token is not None:
            self.token = token
            return
        version = self.run.read_version(LEASE_FILE)
        current = None if version is None else parse_holder(version.data)
        if current is None:  # released between the two requests, or not a lease record: never overwritten
            raise self._held_by(current)
        why = stale_reason(current, self.timeout)
        if why is None:
            raise self._held_by(current)
        token = self.run.replace_if(LEASE_FILE, self._record(), version.token)  # of several takers only one wins
        if token is None:
            raise self._held_by(read_run_holder(self.run))
        self.token = token
        log.warning("took over the lease of %s: %s", current.describe(), why)

    def _start(self) -> None:
        if self.run.remote:
            self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._thread.start()
            return
        for stray in self.path.parent.glob(f"{LEASE_FILE}.*.tmp"):  # a holder killed while writing its record
            other = read_holder(stray)
            if other is not None and other.id != self.holder.id and stale_reason(other, self.timeout):
                stray.unlink(missing_ok=True)
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout / 4):
            self.refresh()

    def _lose(self, current: Holder | None) -> None:
        if not self.lost:
            log.error("lost the lease on %s to %s", self.run, current.describe() if current else "nobody")
        self.lost = True
        self._stop.set()

    def _refresh_remote(self) -> None:
        try:
            token = self.run.replace_if(LEASE_FILE, self._record(), self.token)
            if token is not None:
                self.token = token
                return
            version = self.run.read_version(LEASE_FILE)
        except OSError as exc:  # the store did not answer: the next beat tries again
            log.warning("could not refresh the lease on %s: %s", self.run, exc)
            return
        current = None if version is None else parse_holder(version.data)
        if current is not None and current.id == self.holder.id:  # our last write landed, its reply was lost
            self.token = version.token
            return
        self._lose(current)

    def refresh(self) -> None:
        """Rewrite the heartbeat; marks the lease lost when the file no longer names this holder."""
        if self.run.remote:
            self._refresh_remote()
            return
        current = read_holder(self.path)
        if current is None or current.id != self.holder.id:
            self._lose(current)
            return
        try:
            os.replace(self._temp(), self.path)
        except OSError as exc:  # a slow or full disk: the next beat tries again
            log.warning("could not refresh the lease on %s: %s", self.path.parent, exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it still names this holder (on an object store the check
        and the delete are two requests: a taker can only come between them once this heartbeat is stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.run.remote:
            if not self.lost and (current := read_run_holder(self.run)) is not None and current.id == self.holder.id:
                self.run.remove(LEASE_FILE)
            return
        if not self.lost and (current := read_holder(self.path)) is not None and current.id == self.holder.id:
            self.path.unlink(missing_ok=True)
