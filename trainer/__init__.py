"""The astrobio-train trainer; `from trainer import load_bundle` loads a trained model for notebooks."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_bundle":  # imported on first use: `import trainer.config` stays free of torch
        from trainer.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
