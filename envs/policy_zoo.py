"""The frozen policies the evaluation knows by name, and the task each one plays by default."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from envs.frozen_policy import FrozenPolicy
from memory.numbers import is_int


@dataclass(frozen=True)
class ZooEntry:
    loader: str  # "module:function" returning a FrozenPolicy
    default_env: str
    description: str
    tempofit_layers: tuple[int, ...] | None = None  # None: policies.default_layers


POLICIES: dict[str, ZooEntry] = {
    "smollm2": ZooEntry(
        "envs.text_policy:load_text_policy",
        "tempomem/TextRecall-v0",
        "SmolLM2-135M-Instruct scoring the option words (text tasks)",
    ),
    "gemma3": ZooEntry(
        "envs.text_policy:load_gemma3_text_policy",
        "tempomem/TextRecall-v0",
        "Gemma 3 270M (base) scoring the option words (text tasks)",
    ),
    "tmaze-tiny": ZooEntry(
        "envs.vector_policy:load_vector_policy",
        "tempomem/TMaze-v0",
        "a tiny LLaMA trained memoryless on T-maze frames, frozen (vector tasks)",
        # Of its 4 layers, the middle two: with all four (the default band for 4 layers) the
        # cue is lost past corridor length 4 (measured: 1.0 at length 8 with [1, 2], 0.39 with
        # [0, 1, 2, 3]).
        tempofit_layers=(1, 2),
    ),
    "permanence-vla": ZooEntry(
        "envs.permanence_policy:load_permanence_policy",
        "tempomem/ObjectPermanence-v0",
        "a tiny VLA-shaped LLaMA (image patches + instruction -> cell) trained memoryless on "
        "visible scenes, frozen (object permanence)",
        # calibrate_layers over layers 1-3 (layer 0's keys are the tokens alone, no context:
        # sharp retrieval that brings nothing new) ranks layer 1 first; measured at delay 2,
        # 200 episodes: [1] 0.72, [1, 2] 0.69, [0, 1] 0.56, [2] 0.38, none 0.39.
        tempofit_layers=(1,),
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


def runner_options(
    name: str,
    capacity: int = 8,
    stack: int = 4,
    beta: float | None = None,
    layers: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Memory-runner options for policy ``name``: TempoFit at ``layers`` (None: the layers the
    zoo names for it), ``capacity`` frames and FGTB strength ``beta`` (None: ``TempoFitConfig``'s
    default; only with layers), ``stack`` frames for stacking."""
    from memory import TempoFitConfig

    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    if not is_int(capacity) or not 1 <= capacity <= 256:
        raise ValueError(f"capacity must be an int in [1, 256], got {capacity!r}")
    layers = POLICIES[name].tempofit_layers if layers is None else layers
    tempofit: dict[str, Any] = {"capacity": capacity}
    if beta is not None and layers is None:
        raise ValueError(f"beta needs TempoFit layers named in the zoo; {name} has none")
    if layers is not None:
        fields: dict[str, Any] = {
            "layers": list(layers),
            "capacity": capacity,
            "max_prefix_len": 4096,
        }
        if beta is not None:
            fields["beta"] = beta
        tempofit = {"config": TempoFitConfig.model_validate(fields)}
    return {"tempofit": tempofit, "stacking": {"k": stack}}
