"""Gymnasium wrappers and non-Markovian tasks; ``import envs`` registers the ``tempomem/`` ids.

Registered ids (``TASK_IDS``): ``tempomem/TextRecall-v0`` (text cue recall for LLM policies),
``tempomem/TMaze-v0`` (vector cue-delay T-maze), ``tempomem/ObjectPermanence-v0`` (a tabletop
image + instruction: find the target block under one of several cups) and, when the optional
``minigrid`` package is installed, ``tempomem/MiniGridMemory-v0`` (MiniGrid's MemoryS7 told in
text) and, when the optional ``popgym`` package is installed, ``tempomem/PopgymRepeatFirst-v0``
(POPGym's RepeatFirst: repeat the first card's suit). The tasks end their episodes themselves,
so none has a ``max_episode_steps``.

Importing this package is light (gymnasium only): the wrappers, which need ``memory`` (and
through it torch), load on first use of ``envs.ElapsedTimeWrapper`` / ``envs.TimestampWrapper``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

import gymnasium
from gymnasium.envs.registration import registry

if TYPE_CHECKING:
    from envs.wrappers import ElapsedTimeWrapper, TimestampWrapper

_ENTRY_POINTS = {
    "tempomem/TextRecall-v0": "envs.tasks.text_recall:TextRecallEnv",
    "tempomem/TMaze-v0": "envs.tasks.tmaze:TMazeEnv",
    "tempomem/ObjectPermanence-v0": "envs.tasks.object_permanence:ObjectPermanenceEnv",
}
if importlib.util.find_spec("minigrid") is not None:
    _ENTRY_POINTS["tempomem/MiniGridMemory-v0"] = "envs.tasks.minigrid_memory:MiniGridMemoryEnv"
if importlib.util.find_spec("popgym") is not None:
    _ENTRY_POINTS["tempomem/PopgymRepeatFirst-v0"] = "envs.tasks.popgym_memory:PopgymRepeatFirstEnv"

for _env_id, _entry_point in _ENTRY_POINTS.items():
    if _env_id not in registry:  # importing twice (or reloading) must not fail or warn
        gymnasium.register(id=_env_id, entry_point=_entry_point)

TASK_IDS: tuple[str, ...] = tuple(_ENTRY_POINTS)

_LAZY = {"ElapsedTimeWrapper": "envs.wrappers", "TimestampWrapper": "envs.wrappers"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = ["TASK_IDS", "ElapsedTimeWrapper", "TimestampWrapper"]
