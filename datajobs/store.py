"""Versioned, checksummed datasets on any fsspec URL: `datasets/<name>/<version>/` + manifest + LATEST.

This module is the storage contract between the data jobs (writers) and the trainer (reader). It is
torch-free so the datajobs image stays slim.

Layout under a root URL::

    datasets/<name>/LATEST                      text: the version id of the newest complete version
    datasets/<name>/<version>/manifest.json     written after every shard; a version without it does not exist
    datasets/<name>/<version>/<shard files>     parquet / npz / json, each listed with sha256 in the manifest

A publish writes shards, then the manifest, then replaces LATEST. Every write is atomic (temp file +
rename on local disks, one PUT on object stores), so a job killed at any point leaves the previous
version intact and readable. Publishing content identical to LATEST creates no new version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from datajobs.errors import DataError, MissingExtraError

DEFAULT_ROOT = "./data"
ROOT_ENV = "ASTROBIO_DATA_ROOT"
MANIFEST = "manifest.json"
LATEST = "LATEST"
MANIFEST_FORMAT = 1


def resolve_root(root: str | None = None) -> str:
    """The storage root: the argument, else $ASTROBIO_DATA_ROOT, else ./data."""
    return root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("astrobio-train")
    except PackageNotFoundError:
        pkg = "unknown"
    head = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git", "HEAD")
    try:
        with open(head) as f:
            ref = f.read().strip()
        if ref.startswith("ref: "):
            with open(os.path.join(os.path.dirname(head), ref[5:])) as f:
                ref = f.read().strip()
        return f"{pkg}+g{ref[:12]}"
    except OSError:
        return pkg


def write_local_atomic(path: str | os.PathLike, data: bytes, *, single_writer: bool = False) -> None:
    """A file on a local disk, whole or not at all: a temp file beside it, fsync, rename over the target, fsync of
    the folder (so the new name survives a power loss). The temp is uniquely named, so concurrent writers never
    share one; with `single_writer` (one writer by contract, e.g. a run folder under its lease) it is always
    `.<name>.tmp`, so one left by a kill -9 is overwritten by the next write instead of accumulating."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    suffix = "tmp" if single_writer else f"tmp-{uuid.uuid4().hex}"
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{suffix}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_ref(ref: str) -> tuple[str, str]:
    """Split `name@version` (version defaults to `latest`)."""
    name, _, version = ref.partition("@")
    if not name:
        raise DataError(f"dataset reference {ref!r} has no name; expected NAME or NAME@VERSION")
    return name, version or "latest"


def table_to_parquet(table: pa.Table) -> bytes:
    """Serialise a table to parquet bytes (zstd, no pandas index)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def schema_of(table: pa.Table) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in table.schema]


@dataclass
class Shard:
    """One file of a dataset version, ready to publish."""

    path: str
    data: bytes
    rows: int | None = None
    schema: list[dict[str, str]] | None = None

    @classmethod
    def parquet(cls, path: str, table: pa.Table) -> Shard:
        return cls(path, table_to_parquet(table), rows=table.num_rows, schema=schema_of(table))

    @classmethod
    def json(cls, path: str, obj: Any) -> Shard:
        return cls(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@dataclass
class PublishResult:
    """What a publish did: a new version, or nothing because the content equals LATEST."""

    name: str
    version: str
    created: bool
    bytes_written: int = 0
    rows: int = 0


@dataclass
class DatasetVersion:
    """A complete, published dataset version; reads verify each shard's sha256."""

    store: Store
    name: str
    version: str
    manifest: dict[str, Any] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def url(self) -> str:
        return self.store.version_url(self.name, self.version)

    @property
    def fix_command(self) -> str:
        return self.manifest.get("recreate_command") or f"astrobio-data run {self.name}"

    def shard_entry(self, path: str) -> dict[str, Any]:
        for entry in self.manifest["shards"]:
            if entry["path"] == path:
                return entry
        raise DataError(
            f"{self.ref} has no shard {path!r} (it has {[s['path'] for s in self.manifest['shards']]}); "
            f"re-create it with `{self.fix_command}`"
        )

    def read_bytes(self, path: str) -> bytes:
        """The shard's bytes after checking size and sha256 against the manifest."""
        entry = self.shard_entry(path)
        full = posixpath.join(self.url, path)
        try:
            data = self.store.fs.cat_file(self.store.fs_path(full))
        except FileNotFoundError:
            raise DataError(
                f"{full} is missing but listed in the manifest; re-create it with `{self.fix_command}`"
            ) from None
        if len(data) != entry["bytes"]:
            raise DataError(
                f"{full} is truncated or altered ({len(data)} bytes, manifest says {entry['bytes']}); "
                f"re-create it with `{self.fix_command}`"
            )
        digest = sha256_bytes(data)
        if digest != entry["sha256"]:
            raise DataError(
                f"{full} fails its checksum (sha256 {digest[:12]}…, manifest says {entry['sha256'][:12]}…); "
                f"re-create it with `{self.fix_command}`"
            )
        return data

    def read_table(self, path: str) -> pa.Table:
        """A verified parquet shard as an Arrow table."""
        return pq.read_table(io.BytesIO(self.read_bytes(path)))

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    def shards(self, suffix: str = "") -> list[str]:
        return [s["path"] for s in self.manifest["shards"] if s["path"].endswith(suffix)]

    def verify(self) -> list[str]:
        """Re-check every shard; returns one line per problem (empty when the version is intact)."""
        problems = []
        for entry in self.manifest["shards"]:
            try:
                self.read_bytes(entry["path"])
            except DataError as exc:
                problems.append(str(exc))
        return problems


class Store:
    """Dataset versions under one fsspec root URL (a local folder by default, or `s3://bucket/prefix`)."""

    def __init__(self, root: str | None = None, **storage_options: Any) -> None:
        self.root = resolve_root(root).rstrip("/")
        try:
            self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **storage_options)
        except ImportError as exc:
            protocol = self.root.split("://", 1)[0]
            extra = "s3" if protocol in ("s3", "s3a") else protocol
            raise MissingExtraError(f"the {protocol}:// filesystem ({exc.name or 'its driver'})", extra) from None
        self.is_local = "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    # -- paths ---------------------------------------------------------------------------------
    def dataset_url(self, name: str) -> str:
        return f"{self.root}/datasets/{name}"

    def version_url(self, name: str, version: str) -> str:
        return f"{self.dataset_url(name)}/{version}"

    def fs_path(self, url: str) -> str:
        return self.fs._strip_protocol(url)

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        base = self.fs_path(f"{self.root}/datasets")
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False))

    def versions(self, name: str) -> list[str]:
        """Complete versions (those with a manifest), oldest first."""
        base = self.fs_path(self.dataset_url(name))
        if not self.fs.exists(base):
            return []
        found = []
        for p in self.fs.ls(base, detail=False):
            version = posixpath.basename(p.rstrip("/"))
            if version != LATEST and self.fs.exists(posixpath.join(p, MANIFEST)):
                found.append(version)
        return sorted(found)

    def latest(self, name: str) -> str | None:
        path = self.fs_path(f"{self.dataset_url(name)}/{LATEST}")
        try:
            return self.fs.cat_file(path).decode().strip() or None
        except FileNotFoundError:
            return None

    def open(self, ref: str, fix_command: str | None = None) -> DatasetVersion:
        """Resolve `name@version|latest` to a complete version, or raise a one-line DataError."""
        name, version = parse_ref(ref)
        fix = fix_command or f"astrobio-data run {name}"
        if version == "latest":
            resolved = self.latest(name)
            if resolved is None:
                raise DataError(f"dataset {name!r} not found under {self.root}; create it with `{fix}`")
            version = resolved
        url = f"{self.version_url(name, version)}/{MANIFEST}"
        try:
            raw = self.fs.cat_file(self.fs_path(url))
        except FileNotFoundError:
            if self.fs.exists(self.fs_path(self.version_url(name, version))):
                raise DataError(
                    f"{url} is missing: {name}@{version} is incomplete; re-create it with `{fix}`"
                ) from None
            raise DataError(
                f"dataset version {name}@{version} not found under {self.root} "
                f"(versions: {', '.join(self.versions(name)) or 'none'}); create it with `{fix}`"
            ) from None
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError(f"{url} is not valid JSON; re-create the version with `{fix}`") from None
        if manifest.get("name") != name or manifest.get("version") != version:
            raise DataError(f"{url} describes {manifest.get('name')}@{manifest.get('version')}, not {ref}")
        return DatasetVersion(self, name, version, manifest)

    # -- writing -------------------------------------------------------------------------------
    def _write_atomic(self, url: str, data: bytes) -> None:
        path = self.fs_path(url)
        if self.is_local:
            write_local_atomic(path, data)
        else:
            self.fs.pipe_file(path, data)  # one PUT: the object appears whole or not at all

    def publish(
        self,
        name: str,
        shards: list[Shard],
        *,
        source: Mapping[str, Any],
        acquired_at: dt.datetime | None = None,
        recreate_command: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> PublishResult:
        """Write a new version (shards, then manifest, then LATEST) unless its content equals LATEST's."""
        if not shards:
            raise DataError(f"refusing to publish {name}: no shards")
        entries = sorted(
            ({"path": s.path, "sha256": sha256_bytes(s.data), "bytes": len(s.data), "rows": s.rows} for s in shards),
            key=lambda e: e["path"],
        )
        content_digest = sha256_bytes(json.dumps([(e["path"], e["sha256"]) for e in entries]).encode())
        current = self.latest(name)
        if current is not None:
            try:
                if self.open(f"{name}@{current}").manifest.get("content_digest") == content_digest:
                    return PublishResult(name, current, created=False)
            except DataError:
                pass  # LATEST points at something unreadable: publish a fresh version
        now = dt.datetime.now(dt.UTC)
        version = f"v{now:%Y%m%dT%H%M%SZ}-{content_digest[:8]}"
        rows = sum(e["rows"] or 0 for e in entries)
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "version": version,
            "created_at": now.isoformat(),
            "acquired_at": (acquired_at or now).isoformat(),
            "source": dict(source),
            "code_version": code_version(),
            "recreate_command": recreate_command or f"astrobio-data run {name}",
            "content_digest": content_digest,
            "rows": rows,
            "schema": {s.path: s.schema for s in shards if s.schema is not None},
            "shards": entries,
            **dict(extra or {}),
        }
        base = self.version_url(name, version)
        written = 0
        for shard in shards:
            self._write_atomic(f"{base}/{shard.path}", shard.data)
            written += len(shard.data)
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        self._write_atomic(f"{base}/{MANIFEST}", manifest_bytes)
        self._write_atomic(f"{self.dataset_url(name)}/{LATEST}", f"{version}\n".encode())
        return PublishResult(name, version, created=True, bytes_written=written + len(manifest_bytes), rows=rows)
