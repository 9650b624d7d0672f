"""Shared by the bundle and predict tests: a run's held-out rows as a raw input table, RMSE in dex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


def held_out(run: Path):
    """(component with statistics fitted from the data, its ComponentData, the held-out rows as raw catalogue
    columns plus the measured pl_bmasse): rebuilt from the dataset version the bundle pins."""
    from datajobs.store import Store
    from trainer import components
    from trainer.bundle import load_bundle

    bundle = load_bundle(run)
    (version,) = (v["version"] for v in bundle.lineage.values())
    cfg = bundle.config.model_copy(update={"data": bundle.config.data.model_copy(update={"dataset": version})})
    component = components.get("planets")(cfg)
    data = component.build_data(Store(cfg.data.root))
    inputs = component.held_out.inputs
    table = pa.table({c: pa.array(v, from_pandas=True) for c, v in inputs.items()})
    table = table.append_column("pl_bmasse", pa.array(10.0 ** component.held_out.log_mass))
    return component, data, table


def rmse_dex(pred_mass: np.ndarray, true_mass: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.log10(pred_mass) - np.log10(true_mass)) ** 2)))
