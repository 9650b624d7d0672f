"""The component registry: names the CLI accepts, mapped to their classes (imported lazily)."""

from __future__ import annotations

import importlib

from datajobs.errors import ConfigError
from trainer.components.base import Component

# name -> "module:Class"; modules import only when chosen, so optional extras stay optional.
REGISTRY: dict[str, str] = {
    "planets": "trainer.components.planets:PlanetsComponent",
    "llm": "trainer.components.llm:LLMComponent",
    "datacube": "trainer.components.datacube:DatacubeComponent",
    "graph-vae": "trainer.components.graph_vae:GraphVAEComponent",
    "metabolic-links": "trainer.components.metabolic_links:MetabolicLinksComponent",
    "spectrum": "trainer.components.spectrum:SpectrumComponent",
}


def get(name: str) -> type[Component]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown component {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)
