"""The frozen policies the evaluation knows by name, and the task each one plays by default."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from envs.frozen_policy import FrozenPolicy


@dataclass(frozen=True)
class ZooEntry:
    loader: str  # "module:function" returning a FrozenPolicy
    default_env: str
    description: str


POLICIES: dict[str, ZooEntry] = {
    "smollm2": ZooEntry(
        "envs.text_policy:load_text_policy",
        "tempomem/TextRecall-v0",
        "SmolLM2-135M-Instruct scoring the option words (text tasks)",
    ),
    "tmaze-tiny": ZooEntry(
        "envs.vector_policy:load_vector_policy",
        "tempomem/TMaze-v0",
        "a tiny LLaMA trained memoryless on T-maze frames, frozen (vector tasks)",
    ),
}


def load_policy(name: str) -> FrozenPolicy:
    """The frozen policy called ``name`` (one of ``POLICIES``)."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    module, function = POLICIES[name].loader.split(":")
    policy = getattr(importlib.import_module(module), function)()
    if not isinstance(policy, FrozenPolicy):
        raise TypeError(f"{POLICIES[name].loader} did not return a FrozenPolicy")
    return policy
