"""Readable torch reference for Frame-Gap Temporal Bias (FGTB) retrieval.

Materialises the full (B, H, S, L) score matrix in fp32. Use it for testing and as the
specification; `kernels.blocked` and `kernels.triton_fgtb` compute the same thing without the
full matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels.slopes import alibi_slopes


def fgtb_scores(
    query: Tensor,
    k_hist: Tensor,
    hist_time: Tensor,
    hist_valid: Tensor,
    t: Tensor,
    slopes: Tensor,
    bias_scale: float,
    scale: float | None = None,
) -> Tensor:
    """The FGTB scores (B, H, S, L) fp32: ``scale * Q K_hist^T + B``, -inf at invalid tokens.
    Arguments as ``fgtb_reference``."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    gap = (t.float()[:, None] - hist_time.float()).abs()  # (B, L)
    bias = -bias_scale * slopes.float()[None, :, None] * gap[:, None, :]  # (B, H, L)
    scores = scale * (query.float() @ k_hist.float().transpose(-1, -2)) + bias[:, :, None, :]
    return scores.masked_fill(~hist_valid[:, None, None, :], float("-inf"))


def fgtb_scores_at(
    query: Tensor,
    k_hist: Tensor,
    hist_time: Tensor,
    hist_valid: Tensor,
    time: float | Tensor,
    bias_scale: float,
) -> Tensor:
    """``fgtb_scores`` with the ALiBi slopes of ``query``'s heads (the memory's slopes) and one
    current ``time`` (a float, or (B,)) for the batch. For tools that inspect retrieval."""
    batch, heads = query.shape[:2]
    slopes = alibi_slopes(heads).to(query.device)
    now = torch.as_tensor(time, dtype=torch.float64).expand(batch).to(torch.float32)
    return fgtb_scores(query, k_hist, hist_time, hist_valid, now, slopes, bias_scale)


def fgtb_reference(
    query: Tensor,
    k_hist: Tensor,
    v_hist: Tensor,
    hist_time: Tensor,
    hist_valid: Tensor,
    t: Tensor,
    slopes: Tensor,
    bias_scale: float,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """softmax(scale * Q K_hist^T + B) @ [K_hist, V_hist] over valid history tokens.

    Args:
        query: (B, H, S, D) current prefix keys or queries.
        k_hist, v_hist: (B, H, L, D) stored keys / values.
        hist_time: (B, L) time tag of each stored token.
        hist_valid: (B, L) bool, False for padding and empty slots.
        t: (B,) current time.
        slopes: (H,) per-head slopes m_h.
        bias_scale: beta * alpha_S; B[b, h, l] = -bias_scale * slopes[h] * |t[b] - hist_time[b, l]|.
        scale: score scale, default 1 / sqrt(D).

    Returns:
        (k_ctx, v_ctx), each (B, H, S, D) in query.dtype. Rows with no valid token are zeros.
    """
    if k_hist.shape[2] == 0:  # empty history: every row has no valid token
        return torch.zeros_like(query), torch.zeros_like(query)
    k = k_hist.float()
    v = v_hist.float()
    scores = fgtb_scores(query, k_hist, hist_time, hist_valid, t, slopes, bias_scale, scale)

    # Subtract a finite row max; a row whose scores are all -inf (no valid token) then gives
    # exp(-inf) = 0 everywhere and ends up as zeros instead of NaN.
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    unnormalised = torch.exp(scores - row_max)
    denom = unnormalised.sum(dim=-1, keepdim=True)
    weights = unnormalised / torch.where(denom > 0, denom, torch.ones_like(denom))

    k_ctx = weights @ k
    v_ctx = weights @ v
    return k_ctx.to(query.dtype), v_ctx.to(query.dtype)
