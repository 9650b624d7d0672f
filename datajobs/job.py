"""What a source hands back to the runner, and what the runner hands to a source."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from datajobs.config import SourceConfig
from datajobs.errors import DataError
from datajobs.http import HttpClient
from datajobs.store import DatasetVersion, Shard, Store, sha256_bytes

Mode = Literal["live", "snapshot", "file"]


def snapshot_path(*parts: str) -> Path:
    """A file bundled under datajobs/snapshots/."""
    return Path(str(files("datajobs").joinpath("snapshots", *parts)))


@dataclass
class Context:
    """Everything a source may use: its config, the one HTTP client, the input mode and the previous version."""

    name: str
    config: SourceConfig
    http: HttpClient
    mode: Mode
    file: Path | None
    store: Store
    previous: DatasetVersion | None
    log: logging.Logger

    def read_offline(self, snapshot: Path, expects: str) -> tuple[bytes, dict[str, Any]]:
        """The bundled snapshot or --from-file bytes, with the manifest `source` (file, sha256, provenance)."""
        path = snapshot if self.mode == "snapshot" else self.file
        assert path is not None and self.mode != "live"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror}; pass {expects} with --from-file PATH") from None
        source: dict[str, Any] = {"kind": self.mode, "file": str(path), "sha256": sha256_bytes(data)}
        if self.mode == "snapshot":
            source["file"] = path.name
            source["provenance"] = (path.parent / "PROVENANCE.md").read_text()
        return data, source

    def previous_validators(self, url: str) -> dict[str, str] | None:
        """ETag/Last-Modified that LATEST recorded for `url`, to make the next request conditional."""
        if self.previous is None:
            return None
        source = self.previous.manifest.get("source", {})
        return source.get("validators") if source.get("url") == url else None


@dataclass
class Product:
    """A complete dataset version, ready to publish; `source` goes into the manifest."""

    shards: list[Shard]
    source: dict[str, Any]
    rows_fetched: int
    rows_quarantined: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
