"""Input checks of `LayerwiseKVMemory`, in one place: each raises a ValueError naming the
argument, the session or the layer, before anything is written.

Shapes: B = batch (sessions), H = KV heads, S = prefix tokens of the current frame, D = head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from memory.layer_ring import LayerRing, RingSpec
from memory.numbers import is_int

STORAGE_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" for torch.float32 (the name a state dict stores)."""
    return str(dtype).removeprefix("torch.")


def check_sizes(**sizes: Any) -> None:
    """Every named size is a positive int."""
    for name, value in sizes.items():
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_storage_dtype(dtype: Any) -> None:
    if dtype not in STORAGE_DTYPES.values():
        raise ValueError(
            f"dtype must be one of {sorted(STORAGE_DTYPES)} (floating point), got {dtype}"
        )


def check_kv_input(spec: RingSpec, name: str, x: Any) -> None:
    """A (B, H, S, D) tensor of the memory's batch size, heads, head dim, dtype and device,
    with 1 <= S <= max_prefix_len."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (B, H, S, D), got {tuple(x.shape)}")
    batch, heads, seq_len, dim = x.shape
    if batch != spec.batch_size:
        raise ValueError(f"{name} has batch size {batch}, this memory has {spec.batch_size}")
    if heads != spec.num_kv_heads:
        raise ValueError(f"{name} has {heads} heads, this memory has {spec.num_kv_heads} KV heads")
    if dim != spec.head_dim:
        raise ValueError(f"{name} has head dim {dim}, this memory has {spec.head_dim}")
    if seq_len < 1:
        raise ValueError(f"{name} has no tokens (S = 0)")
    if seq_len > spec.max_prefix_len:
        raise ValueError(
            f"{name} has prefix length {seq_len} > max_prefix_len {spec.max_prefix_len}"
        )
    if x.dtype != spec.dtype:
        raise ValueError(f"{name} has dtype {x.dtype}, this memory stores {spec.dtype}")
    if not _same_device(x.device, spec.device):
        raise ValueError(f"{name} is on {x.device}, this memory is on {spec.device}")


def check_kv_pair(spec: RingSpec, k_name: str, k: Any, v_name: str, v: Any) -> None:
    """Both fit `check_kv_input` and have the same shape."""
    check_kv_input(spec, k_name, k)
    check_kv_input(spec, v_name, v)
    if v.shape != k.shape:
        raise ValueError(
            f"{k_name} and {v_name} must have the same shape, "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )


def check_finite(name: str, x: Tensor, token_mask: Tensor | None, where: str = "") -> None:
    """No NaN/inf in ``x`` (B, H, S, D), ignoring tokens outside ``token_mask`` (B, S)."""
    bad = ~torch.isfinite(x)
    if token_mask is not None:
        bad &= token_mask[:, None, :, None]
    if bool(bad.any()):
        b, h, s, _ = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} contains NaN or inf (first at batch {b}, head {h}, token {s}){where}"
        )


def token_mask(spec: RingSpec, prefix_lens: Any, seq_len: int) -> Tensor | None:
    """(B, S) bool mask of the tokens kept per session from ``prefix_lens`` (B,) ints in
    1..S, or None when all are kept (``prefix_lens`` None or all S)."""
    if prefix_lens is None:
        return None
    lens = torch.as_tensor(prefix_lens)
    if lens.dtype.is_floating_point or lens.dtype.is_complex or lens.dtype == torch.bool:
        raise ValueError(f"prefix_lens must be integers, got dtype {lens.dtype}")
    if lens.shape != (spec.batch_size,):
        raise ValueError(
            f"prefix_lens must have shape ({spec.batch_size},), got {tuple(lens.shape)}"
        )
    lens = lens.to(device="cpu", dtype=torch.long)
    # seq_len <= max_prefix_len is already checked, so this bounds prefix_lens too.
    for b, length in enumerate(lens.tolist()):
        if not 1 <= length <= seq_len:
            raise ValueError(f"prefix_lens[{b}] = {length} must be in 1..S = 1..{seq_len}")
    if bool((lens == seq_len).all()):
        return None
    positions = torch.arange(seq_len)
    return (positions[None, :] < lens[:, None]).to(spec.device)


def session_times(batch_size: int, t: Any) -> Tensor:
    """(B,) float64 CPU times from a float or a scalar / (B,) tensor; finite."""
    if isinstance(t, Tensor):
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise ValueError(f"t must be a real number or tensor, got dtype {t.dtype}")
        times = t.detach().to(device="cpu", dtype=torch.float64)
        if times.dim() == 0:
            times = times.expand(batch_size)
        elif times.shape != (batch_size,):
            raise ValueError(
                f"t must be a float or have shape ({batch_size},), got {tuple(times.shape)}"
            )
    elif isinstance(t, int | float) and not isinstance(t, bool):
        times = torch.full((batch_size,), float(t), dtype=torch.float64)
    else:
        raise ValueError(f"t must be a float or a ({batch_size},) tensor, got {t!r}")
    not_finite = ~torch.isfinite(times)
    if bool(not_finite.any()):
        b = int(not_finite.nonzero()[0])
        raise ValueError(f"t must be finite; session {b} has t = {times[b].item()}")
    return times


def check_time_order(layer: int, ring: LayerRing, times: Tensor, action: str) -> None:
    """No session's time ``times`` (B,) is earlier than its newest frame in ``ring``."""
    newest = ring.newest_time()
    if newest is None:
        return
    backwards = times < newest
    if bool(backwards.any()):
        b = int(backwards.nonzero()[0])
        raise ValueError(
            f"time went backwards for session {b} at layer {layer}: {action} at "
            f"t = {times[b].item()} is earlier than its newest stored frame at "
            f"t = {newest[b].item()} (call reset() to start a new episode)"
        )


def _same_device(actual: torch.device, expected: torch.device) -> bool:
    if actual.type != expected.type:
        return False
    return expected.index is None or actual.index == expected.index
