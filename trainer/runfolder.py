"""The run folder on a local disk or an fsspec URL: atomic small-file writes, reads, listing, deletes, hashes.

Every module that writes or reads a run folder goes through a `RunFolder`. On a local disk a write is temp file
+ fsync + rename (+ fsync of the folder); on an object store (`s3://bucket/prefix`, DCP's fsspec storage) it is
one PUT, so an object appears whole or not at all, and there is no rename and no append. Names are relative to
the run folder, `/`-separated. Credentials come from the environment (AWS_* for s3fs), never from a config file.
The lease (trainer/lease.py) uses the conditional writes `create` and `replace_if` on object stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datajobs.errors import ConfigError, MissingExtraError
from datajobs.store import write_local_atomic

HASH_CHUNK = 8 << 20


def is_url(location: str) -> bool:
    return "://" in location


def fsync_path(path: Path) -> None:
    """fsync one file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file, then every folder (deepest first), so names and contents survive a power loss."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fsync_path(path)
    for d in [*sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), folder]:
        fsync_path(d)


@dataclass(frozen=True)
class Version:
    """An object's content and the token a conditional write compares against (the ETag on S3)."""

    data: bytes
    token: str


class ConditionalWritesUnsupported(Exception):
    """The object store behind a run folder cannot create-if-absent or replace-if-unchanged."""


class RunFolder:
    """One run folder, `<logging.run_dir>/<run_name>`, local or remote."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location).rstrip("/")
        self.remote = is_url(self.location)
        self.fs: Any = None
        self._root = self.location
        if self.remote:
            import fsspec

            try:
                self.fs, self._root = fsspec.core.url_to_fs(self.location)
            except ImportError:
                raise MissingExtraError("s3fs", "s3") from None
            except ValueError as exc:
                raise ConfigError(f"logging.run_dir: {self.location} is not a storage URL fsspec knows "
                                  f"({exc})") from None

    def __str__(self) -> str:
        return self.location

    @property
    def name(self) -> str:
        return posixpath.basename(self.location)

    @property
    def local(self) -> Path:
        """The folder on the local disk (only for a local run folder)."""
        if self.remote:
            raise ValueError(f"{self.location} is not a local folder")
        return Path(self.location)

    def url(self, rel: str = "") -> str:
        """What to show and what DCP is given: the URL (or local path) of a name in the run folder."""
        return f"{self.location}/{rel}" if rel else self.location

    def _fs_path(self, rel: str) -> str:
        return f"{self._root}/{rel}" if rel else self._root

    def sub(self, rel: str) -> RunFolder:
        return RunFolder(self.url(rel))

    # -- writes -------------------------------------------------------------------------------------------
    def makedirs(self, rel: str = "") -> None:
        """A local folder (object stores need none)."""
        if not self.remote:
            Path(self.url(rel)).mkdir(parents=True, exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomic: temp + fsync + rename locally, one PUT on an object store."""
        if self.remote:
            self.fs.pipe_file(self._fs_path(rel), data)
        else:
            write_local_atomic(Path(self.url(rel)), data, single_writer=True)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def upload(self, local: Path, rel: str) -> None:
        """Copy a local file in (remote: one PUT of its bytes; local: atomic copy)."""
        self.write_bytes(rel, local.read_bytes())

    def remove(self, rel: str) -> None:
        """Delete a file or a whole folder/prefix; a missing one is no error."""
        if self.remote:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self._fs_path(rel), recursive=True)
            return
        path = Path(self.url(rel))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    # -- a local working copy (for code that writes through pathlib: bundle, report) ------------------------
    @property
    def scratch(self) -> Path:
        """Where files of this run folder are prepared: the folder itself on a local disk; for an object store a
        local folder named after the URL under $TMPDIR, uploaded with `publish`."""
        if not self.remote:
            return self.local
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"astrobio-run-{digest}"

    def publish(self, rel: str, last: str | None = None) -> None:
        """Upload a file or folder of the working copy (no-op on a local disk); a folder's file named `last` is
        deleted first and uploaded last, so a kill midway leaves it absent rather than describing other files."""
        if not self.remote:
            return
        source = self.scratch / rel
        if source.is_file():
            self.upload(source, rel)
            return
        names = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
        if last is not None:
            self.remove(f"{rel}/{last}")
            names = [n for n in names if n != last] + ([last] if last in names else [])
        for name in names:
            self.upload(source / name, f"{rel}/{name}")

    def fetch(self, rel: str) -> None:
        """Replace the working copy of a file or folder by what the run folder holds (no-op on a local disk)."""
        if not self.remote:
            return
        target = self.scratch / rel
        shutil.rmtree(target, ignore_errors=True)
        if self.is_file(rel):
            write_local_atomic(target, self.read_bytes(rel), single_writer=True)
            return
        for name in (self.files(rel) if self.exists(rel) else {}):
            write_local_atomic(target / name, self.read_bytes(f"{rel}/{name}"), single_writer=True)

    # -- reads --------------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        """FileNotFoundError when absent."""
        if self.remote:
            return self.fs.cat_file(self._fs_path(rel))
        return Path(self.url(rel)).read_bytes()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def is_file(self, rel: str) -> bool:
        if self.remote:
            return self.fs.isfile(self._fs_path(rel))
        return Path(self.url(rel)).is_file()

    def exists(self, rel: str = "") -> bool:
        if self.remote:
            return self.fs.exists(self._fs_path(rel))
        return Path(self.url(rel)).exists()

    def folders(self, rel: str, prefix: str = "") -> list[str]:
        """Names of the sub-folders (prefixes) of `rel` starting with `prefix`, unsorted."""
        if self.remote:
            try:
                entries = self.fs.ls(self._fs_path(rel), detail=True, refresh=True)
            except FileNotFoundError:
                return []
            names = [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"]
        else:
            folder = Path(self.url(rel))
            names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
        return [n for n in names if n.startswith(prefix)]

    def files(self, rel: str) -> dict[str, int]:
        """Every file under `rel`, recursively: relative name -> size in bytes."""
        if self.remote:
            base = self._fs_path(rel)
            self.fs.invalidate_cache(base)
            found = self.fs.find(base, detail=True)
            return {posixpath.relpath(name, base): int(info["size"]) for name, info in found.items()
                    if info["type"] == "file"}
        folder = Path(self.url(rel))
        return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

    def size(self, rel: str) -> int:
        """OSError (FileNotFoundError) when absent."""
        if self.remote:
            return int(self.fs.info(self._fs_path(rel))["size"])
        return Path(self.url(rel)).stat().st_size

    def sha256(self, rel: str) -> str:
        """Read the file back (remote: download it) and hash it."""
        digest = hashlib.sha256()
        with self.fs.open(self._fs_path(rel), "rb") if self.remote else open(self.url(rel), "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    # -- conditional writes (object stores; the lease) ----------------------------------------------------
    def _s3(self, method: str, rel: str, **kwargs: Any) -> dict[str, Any]:
        bucket, key, _ = self.fs.split_path(self._fs_path(rel))
        return self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)

    def _require_s3(self) -> None:
        if type(self.fs).__name__ != "S3FileSystem":
            raise ConditionalWritesUnsupported(f"{self.location}: only s3:// run folders support the conditional "
                                               f"writes the lease needs")

    def read_version(self, rel: str) -> Version | None:
        """The object and its token; None when absent."""
        self._require_s3()
        try:
            out = self._s3("get_object", rel)
        except FileNotFoundError:
            return None
        return Version(_read_body(self.fs, out["Body"]), out["ETag"].strip('"'))

    def create(self, rel: str, data: bytes) -> str | None:
        """Create the object only if no object has this name (If-None-Match: *); its token, or None when one
        exists."""
        self._require_s3()
        try:
            return self._s3("put_object", rel, Body=data, IfNoneMatch="*")["ETag"].strip('"')
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise

    def replace_if(self, rel: str, data: bytes, token: str) -> str | None:
        """Overwrite the object only if it is still the version with this token (If-Match); the new token, or
        None when it changed or is gone. Ceph RGW 16.2 matches only an unquoted ETag, AWS the quoted one: both
        forms are tried (each write is conditional, so trying both never overwrites a changed object)."""
        self._require_s3()
        for form in (token, f'"{token}"'):
            try:
                return self._s3("put_object", rel, Body=data, IfMatch=form)["ETag"].strip('"')
            except FileNotFoundError:
                return None
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise
        return None


def _precondition_failed(exc: OSError) -> bool:
    """s3fs turns HTTP 412 into an OSError; its text or its cause names PreconditionFailed."""
    cause = exc.__cause__ or exc.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "") if cause is not None else ""
    return code == "PreconditionFailed" or "PreconditionFailed" in str(exc) or "412" in str(exc)


def _read_body(fs: Any, body: Any) -> bytes:
    """The bytes of an aiobotocore streaming body, read on s3fs's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        async with body:
            return await body.read()

    return sync(fs.loop, read)
