"""Retrofits of frozen models: TempoFit and EpisodicLM on transformers models, model loaders.

Imports ``memory`` and ``kernels`` only. The transformers-heavy modules load lazily, on first
use of the name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.episodic_lm import EpisodicLM
    from policies.episodic_plot import plot_events
    from policies.layer_selection import LayerCalibration, calibrate_layers, default_layers
    from policies.models import load_gemma3, load_smollm2, tiny_random_model
    from policies.tempofit import TempoFit

_LAZY = {
    "EpisodicLM": "policies.episodic_lm",
    "plot_events": "policies.episodic_plot",
    "TempoFit": "policies.tempofit",
    "load_gemma3": "policies.models",
    "load_smollm2": "policies.models",
    "tiny_random_model": "policies.models",
    "default_layers": "policies.layer_selection",
    "calibrate_layers": "policies.layer_selection",
    "LayerCalibration": "policies.layer_selection",
}

__all__ = [
    "EpisodicLM",
    "LayerCalibration",
    "TempoFit",
    "calibrate_layers",
    "default_layers",
    "load_gemma3",
    "load_smollm2",
    "plot_events",
    "tiny_random_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
