"""Input checks for `kernels.fgtb_forward` (so `fgtb_retrieve`): ValueErrors naming the argument."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from kernels.metadata import FGTBMetadata


def _require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _require_floating(name: str, tensor: Tensor) -> None:
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {tensor.dtype}")


def _require_shape(name: str, tensor: Tensor, expected: tuple[int, ...], layout: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"{name} must have shape {layout} = {expected} (B, H, D from query, L from k_hist),"
            f" got {tuple(tensor.shape)}"
        )


def _require_finite_real(name: str, value: object, kind: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {kind}, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value}")


def validate_fgtb_inputs(
    query: Tensor, k_hist: Tensor, v_hist: Tensor, metadata: FGTBMetadata, check_finite: bool = True
) -> None:
    """Raise ValueError naming the offending argument unless the inputs fit the FGTB contract.

    Expected: query (B, H, S, D); k_hist, v_hist (B, H, L, D); in ``metadata``: hist_time (B, L)
    floating, hist_valid (B, L) bool, t (B,) floating, slopes (H,) floating, bias_scale a
    finite real, scale None or a finite real; all tensors on one device.
    With check_finite, NaN/inf anywhere in query, k_hist, v_hist, hist_time, t or slopes is an
    error (padding slots must hold finite values too: 0 * nan would leak through the mask).
    """
    if not isinstance(metadata, FGTBMetadata):
        raise ValueError(f"metadata must be an FGTBMetadata, got {type(metadata).__name__}")
    named = {
        "query": query,
        "k_hist": k_hist,
        "v_hist": v_hist,
        "hist_time": metadata.hist_time,
        "hist_valid": metadata.hist_valid,
        "t": metadata.t,
        "slopes": metadata.slopes,
    }
    for name, value in named.items():
        _require_tensor(name, value)

    if query.dim() != 4:
        raise ValueError(f"query must be 4-D (B, H, S, D), got shape {tuple(query.shape)}")
    if k_hist.dim() != 4:
        raise ValueError(f"k_hist must be 4-D (B, H, L, D), got shape {tuple(k_hist.shape)}")
    batch, heads, _, dim = query.shape
    hist_len = k_hist.shape[2]
    _require_shape("k_hist", k_hist, (batch, heads, hist_len, dim), "(B, H, L, D)")
    _require_shape("v_hist", v_hist, (batch, heads, hist_len, dim), "(B, H, L, D)")
    _require_shape("hist_time", metadata.hist_time, (batch, hist_len), "(B, L)")
    _require_shape("hist_valid", metadata.hist_valid, (batch, hist_len), "(B, L)")
    _require_shape("t", metadata.t, (batch,), "(B,)")
    _require_shape("slopes", metadata.slopes, (heads,), "(H,)")

    for name in ("query", "k_hist", "v_hist", "hist_time", "t", "slopes"):
        _require_floating(name, named[name])
    if metadata.hist_valid.dtype != torch.bool:
        raise ValueError(f"hist_valid must be a bool tensor, got {metadata.hist_valid.dtype}")

    devices = {name: value.device for name, value in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listed}")

    _require_finite_real("bias_scale", metadata.bias_scale, "a float")
    if metadata.scale is not None:
        _require_finite_real("scale", metadata.scale, "a float or None")

    if check_finite:
        _require_all_finite(named)


def _require_all_finite(named: dict[str, Tensor]) -> None:
    checked = {name: value for name, value in named.items() if value.is_floating_point()}
    # One reduction and one host sync for all tensors; find the culprit only on failure.
    flags = torch.stack([torch.isfinite(value).all() for value in checked.values()])
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(checked, flags.tolist(), strict=True) if not ok]
    raise ValueError(f"{', '.join(bad)} contain NaN or inf (padding slots must be finite too)")
