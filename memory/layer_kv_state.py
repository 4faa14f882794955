"""The state-dict format of `LayerwiseKVMemory` (``tempomem.LayerwiseKVMemory/1``): writing it,
and reading it back with every check, into new `LayerRing`s.

A state is a flat dict of tensors and plain JSON values (never pickled objects):

- ``format``, ``config`` (the TempoFitConfig as JSON), ``num_kv_heads``, ``head_dim``,
  ``batch_size``, ``dtype`` (e.g. "float32");
- per layer i, ``layer.{i}.num_frames`` and ``layer.{i}.next_slot`` (ints: the ring position,
  so that a restored memory sums the history in the same order and retrieves bit-identically);
- per non-empty layer i, oldest frame first: ``layer.{i}.keys`` / ``layer.{i}.values``
  (B, H, N, S_slot, D) in the memory's dtype, ``layer.{i}.token_valid`` (B, N, S_slot) bool
  and ``layer.{i}.frame_time`` (B, N) float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from memory.layer_kv_checks import dtype_name
from memory.layer_ring import LayerRing, RingFrames, RingSpec
from memory.numbers import is_int
from memory.tempofit_config import TempoFitConfig

STATE_FORMAT = "tempomem.LayerwiseKVMemory/1"

# Fields that define what the stored state means; a state saved under other values cannot be
# loaded. The others (beta, alpha, retrieval, loading, rescale, eps, backend) only change how
# the state is read, so they may differ, e.g. to sweep beta over one recorded episode.
STATE_DEFINING_CONFIG_FIELDS = ("layers", "capacity", "max_prefix_len", "gap_unit")

HEADER_KEYS = ("format", "config", "num_kv_heads", "head_dim", "batch_size", "dtype")
RING_POSITION_NAMES = ("num_frames", "next_slot")
FRAME_TENSOR_NAMES = ("keys", "values", "token_valid", "frame_time")


def layer_key(layer: int, name: str) -> str:
    """The state key of one layer's field, e.g. ``layer.2.keys``."""
    return f"layer.{layer}.{name}"


def _header(config: TempoFitConfig, spec: RingSpec) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "config": config.model_dump(mode="json"),
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "batch_size": spec.batch_size,
        "dtype": dtype_name(spec.dtype),
    }


def memory_state(
    config: TempoFitConfig, spec: RingSpec, rings: Mapping[int, LayerRing]
) -> dict[str, Any]:
    """The state dict of a memory with ``rings`` per layer; tensors are fresh copies on the
    memory's device (frame times on the CPU)."""
    state = _header(config, spec)
    for layer, ring in rings.items():
        state[layer_key(layer, "num_frames")] = ring.num_frames
        state[layer_key(layer, "next_slot")] = ring.next_slot
        if ring.num_frames == 0:
            continue
        frames = ring.chronological()
        for name in FRAME_TENSOR_NAMES:
            state[layer_key(layer, name)] = getattr(frames, name).contiguous()
    return state


def rings_from_state(config: TempoFitConfig, spec: RingSpec, state: Any) -> dict[int, LayerRing]:
    """New rings for every layer of ``config`` from ``state``, after checking the format, that
    the config agrees on the state-defining fields, the head count, head dim, batch size and
    dtype of ``spec``, every tensor's shape and dtype, finite values, per-session time order
    and that no key is left over. Raises ValueError naming the problem."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state must be a mapping, got {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"state format must be {STATE_FORMAT!r}, got {state.get('format')!r}")
    _check_state_config(config, state.get("config"))
    header = _header(config, spec)
    for name in ("num_kv_heads", "head_dim", "batch_size", "dtype"):
        if state.get(name) != header[name]:
            raise ValueError(
                f"state {name} is {state.get(name)!r}, this memory has {header[name]!r}"
            )

    expected_keys = set(HEADER_KEYS)
    rings: dict[int, LayerRing] = {}
    for layer in config.layers:
        num_frames, next_slot = _ring_position(spec, layer, state)
        expected_keys |= {layer_key(layer, name) for name in RING_POSITION_NAMES}
        if num_frames == 0:
            rings[layer] = LayerRing(spec)
            continue
        frames = _checked_frames(spec, layer, num_frames, state)
        expected_keys |= {layer_key(layer, name) for name in FRAME_TENSOR_NAMES}
        rings[layer] = LayerRing.restore(spec, num_frames, next_slot, frames)
    unexpected = sorted(set(state) - expected_keys)
    if unexpected:
        raise ValueError(f"state has unexpected keys {unexpected}")
    return rings


def _check_state_config(config: TempoFitConfig, config_state: Any) -> None:
    if not isinstance(config_state, Mapping):
        raise ValueError(f"state config must be a dict, got {type(config_state).__name__}")
    try:
        saved = TempoFitConfig.model_validate(dict(config_state))
    except Exception as error:  # pydantic's ValidationError, re-raised as ValueError
        raise ValueError(f"state config is invalid: {error}") from error
    differing = [
        f"{field} (state {getattr(saved, field)!r}, memory {getattr(config, field)!r})"
        for field in STATE_DEFINING_CONFIG_FIELDS
        if getattr(saved, field) != getattr(config, field)
    ]
    if differing:
        raise ValueError(f"state config is incompatible: {', '.join(differing)}")


def _ring_position(spec: RingSpec, layer: int, state: Mapping[str, Any]) -> tuple[int, int]:
    """(num_frames, next_slot) of one layer, checked against the ring's capacity."""
    count_key, slot_key = layer_key(layer, "num_frames"), layer_key(layer, "next_slot")
    num_frames, next_slot = _state_int(state, count_key), _state_int(state, slot_key)
    capacity = spec.capacity
    if not 0 <= num_frames <= capacity:
        raise ValueError(f"state {count_key} = {num_frames} must be in 0..{capacity}")
    # The ring fills from slot 0, so until it is full the next slot is the frame count.
    ring_full = num_frames == capacity
    slot_fits = (0 <= next_slot < capacity) if ring_full else (next_slot == num_frames)
    if not slot_fits:
        raise ValueError(
            f"state {slot_key} = {next_slot} does not fit {num_frames} frames in a ring of "
            f"{capacity}"
        )
    return num_frames, next_slot


def _state_int(state: Mapping[str, Any], key: str) -> int:
    value = state.get(key)
    if not is_int(value):
        raise ValueError(f"state {key} must be an int, got {value!r}")
    return value


def _checked_frames(
    spec: RingSpec, layer: int, num_frames: int, state: Mapping[str, Any]
) -> RingFrames:
    """One non-empty layer's four frame tensors, with their shapes, dtypes, finiteness and
    time order checked."""
    prefix = layer_key(layer, "")
    tensors: dict[str, Tensor] = {}
    for name in FRAME_TENSOR_NAMES:
        value = state.get(prefix + name)
        if not isinstance(value, Tensor):
            raise ValueError(f"state {prefix + name} must be a tensor, got {type(value).__name__}")
        tensors[name] = value
    keys = tensors["keys"]
    batch, heads, dim = spec.batch_size, spec.num_kv_heads, spec.head_dim
    slot_len = keys.shape[3] if keys.dim() == 5 else -1
    if not 1 <= slot_len <= spec.max_prefix_len:
        raise ValueError(
            f"state {prefix}keys must have shape (B, H, N, S_slot, D) with 1 <= S_slot <= "
            f"{spec.max_prefix_len}, got {tuple(keys.shape)}"
        )
    expected = {
        "keys": ((batch, heads, num_frames, slot_len, dim), spec.dtype),
        "values": ((batch, heads, num_frames, slot_len, dim), spec.dtype),
        "token_valid": ((batch, num_frames, slot_len), torch.bool),
        "frame_time": ((batch, num_frames), torch.float64),
    }
    for name, (shape, dtype) in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"state {prefix + name} has shape {tuple(tensor.shape)}, expected {shape}"
            )
        if tensor.dtype != dtype:
            raise ValueError(f"state {prefix + name} has dtype {tensor.dtype}, expected {dtype}")
    for name in ("keys", "values", "frame_time"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"state {prefix + name} contains NaN or inf")
    frame_time = tensors["frame_time"].detach().to("cpu")
    if num_frames > 1 and bool((frame_time[:, 1:] < frame_time[:, :-1]).any()):
        raise ValueError(f"state {prefix}frame_time goes backwards within a session")
    return RingFrames(
        keys=keys,
        values=tensors["values"],
        token_valid=tensors["token_valid"],
        frame_time=frame_time,
    )
