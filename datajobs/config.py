"""Per-source job settings: pydantic models read from one YAML file whose top-level keys are source names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datajobs.errors import ConfigError


class HttpSettings(BaseModel):
    """How the shared HTTP client talks to one archive."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(30.0, gt=0, description="connect and read timeout per request")
    max_attempts: int = Field(5, ge=1, description="attempts per request, the first included")
    backoff_initial_s: float = Field(1.0, ge=0, description="first backoff; doubles per retry, with jitter")
    backoff_max_s: float = Field(60.0, ge=0, description="cap of one backoff")
    retry_after_max_s: float = Field(300.0, ge=0, description="cap on an archive's Retry-After")
    requests_per_second: float = Field(2.0, gt=0, description="per-host rate limit")


class SourceConfig(BaseModel):
    """Settings every source shares; each source subclasses it with its own fields."""

    model_config = ConfigDict(extra="forbid")

    http: HttpSettings = Field(default_factory=HttpSettings)
    max_invalid_share: float = Field(0.05, ge=0, le=1, description="refuse to publish above this quarantined share")


C = TypeVar("C", bound=SourceConfig)


def load_config(path: Path | None, source: str, model: type[C], known_sources: list[str]) -> C:
    """The `source` section of a YAML config file (defaults when no file or no section)."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must map source names to settings, e.g. `{source}: {{...}}`")
        doc = raw or {}
        unknown = sorted(set(doc) - set(known_sources))
        if unknown:
            raise ConfigError(f"config file {path}: unknown source {unknown[0]!r} (known: {', '.join(known_sources)})")
    section = doc.get(source) or {}
    try:
        return model.model_validate(section)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in (source, *err["loc"]))
        raise ConfigError(f"config {path or '(defaults)'}: {key}: {err['msg']}") from None
