"""Docs that must not drift from the code."""

from __future__ import annotations

from tests.conftest import REPO
from trainer.config import RunConfig


def test_every_config_key_is_documented() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    for name, field in RunConfig.model_fields.items():
        keys = [f"{name}.{k}" for k in field.annotation.model_fields] if hasattr(field.annotation,
                                                                                 "model_fields") else [name]
        for key in keys:
            assert f"| `{key}` |" in text, f"docs/config.md does not document {key}"
