"""`fgtb_retrieve`: validate inputs, then run the fastest available FGTB backend.

Backends: "triton" (fused kernel, CUDA tensors), "blocked" (online softmax over history blocks,
any device), "reference" (full score matrix, for tests). "auto" picks triton for CUDA tensors
when triton imports, else blocked.
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
from torch import Tensor

from kernels.blocked import fgtb_blocked
from kernels.reference import fgtb_reference
from kernels.validation import validate_fgtb_inputs

BACKENDS = ("auto", "reference", "blocked", "triton")
TRITON_MAX_HEAD_DIM = 256  # the fused kernel keeps two (BLOCK_S, D) fp32 tiles in registers


@functools.cache
def triton_available() -> bool:
    """True when `import triton` works (imports it once; the result is cached)."""
    try:
        importlib.import_module("triton")
    except Exception:  # a broken install can fail with more than ImportError
        return False
    return True


def resolve_backend(backend: str, device: torch.device, head_dim: int = 0) -> str:
    """Map "auto" to a concrete backend for tensors on `device`; reject unknown names."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    use_triton = device.type == "cuda" and head_dim <= TRITON_MAX_HEAD_DIM and triton_available()
    return "triton" if use_triton else "blocked"


def _times_as_float32(hist_time: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Cast times to float32; float64 times are first made relative to t.

    Absolute float64 times such as epoch seconds (~1.7e9) would keep only ~2 minutes of
    resolution in float32; |t - tau| is unchanged by subtracting t from both.
    """
    if hist_time.dtype == torch.float64 or t.dtype == torch.float64:
        relative = hist_time.double() - t.double()[:, None]
        return relative.float(), torch.zeros_like(t, dtype=torch.float32)
    return hist_time.float(), t.float()


def fgtb_retrieve(
    query: Tensor,
    k_hist: Tensor,
    v_hist: Tensor,
    hist_time: Tensor,
    hist_valid: Tensor,
    t: Tensor,
    slopes: Tensor,
    bias_scale: float,
    scale: float | None = None,
    backend: str = "auto",
    *,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """Frame-Gap Temporal Bias retrieval: softmax(Q K_hist^T * scale + B) @ [K_hist, V_hist].

    Args:
        query: (B, H, S, D) current prefix keys (K-to-K) or group-mean queries (Q-to-K).
        k_hist, v_hist: (B, H, L, D) stored pre-RoPE keys and values.
        hist_time: (B, L) time tag tau of the frame each stored token belongs to.
        hist_valid: (B, L) bool, False for padding and empty slots.
        t: (B,) current time.
        slopes: (H,) per-head slopes m_h (see `alibi_slopes`).
        bias_scale: beta * alpha_S; B[b, h, l] = -bias_scale * slopes[h] * |t[b] - tau[b, l]|.
        scale: score scale, default 1 / sqrt(D).
        backend: "auto" | "reference" | "blocked" | "triton".
        check_finite: reject NaN/inf inputs (costs one host sync on CUDA).

    Returns:
        (k_ctx, v_ctx), each (B, H, S, D) in query.dtype, fp32 accumulation. A row with no
        valid history token is zeros.
    """
    validate_fgtb_inputs(
        query, k_hist, v_hist, hist_time, hist_valid, t, slopes, bias_scale, scale, check_finite
    )
    chosen = resolve_backend(backend, query.device, query.shape[-1])
    hist_time, t = _times_as_float32(hist_time, t)
    args = (query, k_hist, v_hist, hist_time, hist_valid, t, slopes, float(bias_scale), scale)

    if chosen == "reference":
        return fgtb_reference(*args)
    if chosen == "blocked":
        return fgtb_blocked(*args)

    if not triton_available():
        raise RuntimeError("backend='triton' was requested but triton cannot be imported")
    if query.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {query.device}"
        )
    from kernels.triton_fgtb import fgtb_triton  # imports triton; only on this path

    return fgtb_triton(*args)
