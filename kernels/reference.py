"""Readable torch reference for Frame-Gap Temporal Bias (FGTB) retrieval.

Materialises the full (B, H, S, L) score matrix in fp32. Use it for testing and as the
specification; `kernels.blocked` and `kernels.triton_fgtb` compute the same thing without the
full matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.metadata import FGTBMetadata


def fgtb_scores(query: Tensor, k_hist: Tensor, metadata: FGTBMetadata) -> Tensor:
    """The FGTB scores (B, H, S, L) fp32: ``scale * Q K_hist^T + B``, -inf at invalid tokens.

    query (B, H, S, D); k_hist (B, H, L, D); ``B`` and the mask from ``metadata``.
    """
    scale = metadata.score_scale(query.shape[-1])
    gap = (metadata.t.float()[:, None] - metadata.hist_time.float()).abs()  # (B, L)
    head_coef = -metadata.bias_scale * metadata.slopes.float()  # (H,)
    bias = head_coef[None, :, None] * gap[:, None, :]  # (B, H, L)
    scores = scale * (query.float() @ k_hist.float().transpose(-1, -2)) + bias[:, :, None, :]
    return scores.masked_fill(~metadata.hist_valid[:, None, None, :], float("-inf"))


def fgtb_reference(
    query: Tensor, k_hist: Tensor, v_hist: Tensor, metadata: FGTBMetadata
) -> tuple[Tensor, Tensor]:
    """softmax(scale * Q K_hist^T + B) @ [K_hist, V_hist] over valid history tokens.

    Args:
        query: (B, H, S, D) current prefix keys or queries.
        k_hist, v_hist: (B, H, L, D) stored keys / values.
        metadata: times, validity mask, slopes and scales (see `FGTBMetadata`).

    Returns:
        (k_ctx, v_ctx), each (B, H, S, D) in query.dtype. Rows with no valid token are zeros.
    """
    if k_hist.shape[2] == 0:  # empty history: every row has no valid token
        return torch.zeros_like(query), torch.zeros_like(query)
    k = k_hist.float()
    v = v_hist.float()
    scores = fgtb_scores(query, k_hist, metadata)

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
