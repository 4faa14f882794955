"""`fgtb_forward` / `fgtb_retrieve`: validate inputs once, then run the chosen FGTB backend.

Backends: "triton" (fused kernel, CUDA tensors), "blocked" (online softmax over history blocks,
any device), "reference" (full score matrix, for tests). "auto" picks triton for CUDA tensors
with head dim <= `TRITON_MAX_HEAD_DIM` when triton imports, else blocked. Every backend has the
signature ``backend(query, k_hist, v_hist, metadata)`` (`kernels.metadata.FGTBBackend`).
"""

from __future__ import annotations

import functools
import importlib
import os

import torch
from torch import Tensor

from kernels.blocked import fgtb_blocked
from kernels.metadata import FGTBBackend, FGTBMetadata
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


def _triton_backend(device: torch.device) -> FGTBBackend:
    """`kernels.triton_fgtb.fgtb_triton`, imported (with triton) only when asked for."""
    if not triton_available():
        raise RuntimeError("backend='triton' was requested but triton cannot be imported")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}"
        )
    from kernels.triton_fgtb import fgtb_triton

    return fgtb_triton


def fgtb_forward(
    query: Tensor,
    k_hist: Tensor,
    v_hist: Tensor,
    metadata: FGTBMetadata,
    backend: str = "auto",
    *,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor]:
    """Frame-Gap Temporal Bias retrieval: softmax(Q K_hist^T * scale + B) @ [K_hist, V_hist].

    Args:
        query: (B, H, S, D) current prefix keys (K-to-K) or group-mean queries (Q-to-K).
        k_hist, v_hist: (B, H, L, D) stored pre-RoPE keys and values.
        metadata: times (B, L), validity (B, L), current time (B,), slopes (H,), bias_scale
            and scale; B[b, h, l] = -bias_scale * slopes[h] * |t[b] - hist_time[b, l]|.
        backend: "auto" | "reference" | "blocked" | "triton".
        check_finite: reject NaN/inf inputs (costs one host sync on CUDA).

    Returns:
        (k_ctx, v_ctx), each (B, H, S, D) in query.dtype, fp32 accumulation. A row with no
        valid history token is zeros.
    """
    validate_fgtb_inputs(query, k_hist, v_hist, metadata, check_finite)
    chosen = resolve_backend(backend, query.device, query.shape[-1])
    implementation: FGTBBackend
    if chosen == "reference":
        implementation = fgtb_reference
    elif chosen == "blocked":
        implementation = fgtb_blocked
    else:
        implementation = _triton_backend(query.device)
    return implementation(query, k_hist, v_hist, metadata.with_float32_times())


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
    """`fgtb_forward` with the metadata's fields as arguments (the documented signature):
    hist_time (B, L), hist_valid (B, L) bool, t (B,), slopes (H,) (see `alibi_slopes`),
    bias_scale = beta * alpha_S, scale (default 1 / sqrt(D)). Returns (k_ctx, v_ctx)."""
    metadata = FGTBMetadata(hist_time, hist_valid, t, slopes, bias_scale, scale)
    return fgtb_forward(query, k_hist, v_hist, metadata, backend, check_finite=check_finite)
