"""Memory mechanisms: model-agnostic, no I/O. Imports `kernels` only."""

from memory.clock import Clock, SimClock, SystemClock, parse_timestamp
from memory.episodic import EpisodicConfig
from memory.layer_kv import LayerwiseKVMemory
from memory.tempofit_config import TempoFitConfig

__all__ = [
    "Clock",
    "EpisodicConfig",
    "LayerwiseKVMemory",
    "SimClock",
    "SystemClock",
    "TempoFitConfig",
    "parse_timestamp",
]
