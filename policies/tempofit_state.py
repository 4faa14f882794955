"""TempoFit's state dict, one session or several: the step counter, batching and unbatching.

``TempoFit.state_dict()`` is the memory's state (``memory.LayerwiseKVMemory.state_dict``: plain
values plus per-layer tensors whose first dim is the batch of sessions, B) and one key of
TempoFit's own, ``STEPS_PUSHED_KEY``. This module is the one place that reads those keys for
several sessions at once: a batch of single-session states (B = 1 each) whose memories have the
same shape is stacked into one state of B sessions, so they can share one forward, and the
state after that forward is split back into one state per session::

    batched = stack_states(states)             # None when the memories are empty
    ...                                         # load into TempoFit(batch_size=len(states)), step
    rows = split_state(tf.state_dict(), [steps_pushed(s) + 1 for s in states])

``split_state(stack_states(states), [steps_pushed(s) for s in states])`` equals ``states``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

#: The key of TempoFit's own step counter (frames pushed since construction or reset).
STEPS_PUSHED_KEY = "tempofit.steps_pushed"
#: Keys of TempoFit's own (the rest of a TempoFit state is the memory's).
TEMPOFIT_KEY_PREFIX = "tempofit."
#: The memory state's keys used here (see ``memory.LayerwiseKVMemory.state_dict``).
_BATCH_SIZE_KEY = "batch_size"
_LAYER_KEY_PREFIX = "layer."

MemoryShape = tuple[tuple[int | None, int | None, int], ...]
"""Per configured layer: (frames stored, next ring slot, slot length); None for a key the state
lacks (such a state does not fit, and loading it says why)."""


def _layer_key(layer: int, name: str) -> str:
    return f"{_LAYER_KEY_PREFIX}{layer}.{name}"


def _is_session_tensor(key: str, value: Any) -> bool:
    """Whether ``value`` holds per-session rows along dim 0 (the memory's layer tensors)."""
    return isinstance(value, Tensor) and key.startswith(_LAYER_KEY_PREFIX)


def steps_pushed(state: Mapping[str, Any] | None) -> int:
    """The session's step counter; 0 for None (an empty memory)."""
    return 0 if state is None else int(state[STEPS_PUSHED_KEY])


def memory_shape(state: Mapping[str, Any] | None, layers: Sequence[int]) -> MemoryShape | None:
    """What must be equal for two single-session states to be stacked; None when ``state``
    does not hold exactly one session. None (an empty memory) is all zeros."""
    shape: list[tuple[int | None, int | None, int]] = []
    for layer in layers:
        if state is None:
            shape.append((0, 0, 0))
            continue
        frames = state.get(_layer_key(layer, "num_frames"))
        slot = state.get(_layer_key(layer, "next_slot"))
        keys = state.get(_layer_key(layer, "keys"))
        slot_len = int(keys.shape[3]) if isinstance(keys, Tensor) else 0
        if state.get(_BATCH_SIZE_KEY) != 1:
            return None
        shape.append((frames, slot, slot_len))
    return tuple(shape)


def stack_states(states: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """One state of ``len(states)`` sessions, row b being ``states[b]``.

    The states must be single-session states of equal ``memory_shape`` (an empty memory may be
    None); the result's step counter is the largest of theirs. None when ``states[0]`` is None
    (equal shapes: every memory is empty, nothing to load). ValueError for states that cannot
    be stacked.
    """
    if not states:
        raise ValueError("stack_states needs at least one state")
    first = states[0]
    if first is None:
        return None
    layers = sorted(
        int(key.split(".")[1])
        for key in first
        if key.startswith(_LAYER_KEY_PREFIX) and key.endswith(".num_frames")
    )
    shapes = {memory_shape(state, layers) for state in states}
    if len(shapes) != 1 or None in shapes:
        raise ValueError(
            f"only single-session states of equal memory shape stack; got shapes {shapes}"
        )
    stacked: dict[str, Any] = {}
    for key, value in first.items():
        if _is_session_tensor(key, value):
            stacked[key] = torch.cat([state[key] for state in states], dim=0)  # type: ignore[index]
        else:
            stacked[key] = value
    stacked[_BATCH_SIZE_KEY] = len(states)
    stacked[STEPS_PUSHED_KEY] = max(steps_pushed(state) for state in states)
    return stacked


def split_state(batched: Mapping[str, Any], steps: Sequence[int]) -> list[dict[str, Any]]:
    """One single-session state per row of ``batched``; row b's step counter is ``steps[b]``
    (each session keeps its own). Tensors are fresh copies."""
    size = batched.get(_BATCH_SIZE_KEY)
    if size != len(steps):
        raise ValueError(f"state holds {size!r} sessions, got {len(steps)} step counters")
    rows: list[dict[str, Any]] = []
    for b, count in enumerate(steps):
        row: dict[str, Any] = {}
        for key, value in batched.items():
            row[key] = value[b : b + 1].clone() if _is_session_tensor(key, value) else value
        row[_BATCH_SIZE_KEY] = 1
        row[STEPS_PUSHED_KEY] = count
        rows.append(row)
    return rows
