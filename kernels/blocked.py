"""Blocked CPU path for FGTB retrieval: online softmax over blocks of the history axis.

At most one (B, H, S, block_size) block of scores exists at a time; the K and V contexts are
accumulated in fp32 and rescaled whenever the running row max grows (the flash-attention
recurrence).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.metadata import FGTBMetadata

# 4096 history tokens per block: at S=256 and 3 heads one block of fp32 scores is 12 MiB, and
# 8 frames of 256 tokens fit one block, so the common case pays no online-softmax rescaling
# (with 512, the step overhead on SmolLM2 at N=8 was ~1.5x the matmul floor; BENCHMARKS.md).
DEFAULT_BLOCK_SIZE = 4096


def fgtb_blocked(
    query: Tensor,
    k_hist: Tensor,
    v_hist: Tensor,
    metadata: FGTBMetadata,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Same result as `kernels.reference.fgtb_reference`, in blocks of `block_size` tokens.

    Shapes: query (B, H, S, D); k_hist, v_hist (B, H, L, D); the (B, L) times and mask, (B,)
    current time and (H,) slopes in ``metadata``. Returns (k_ctx, v_ctx), each (B, H, S, D)
    in query.dtype.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    batch, heads, seq, dim = query.shape
    hist_len = k_hist.shape[2]
    scale = metadata.score_scale(dim)
    hist_time, hist_valid = metadata.hist_time, metadata.hist_valid

    q = query.float()
    needs_grad = torch.is_grad_enabled() and (
        query.requires_grad or k_hist.requires_grad or v_hist.requires_grad
    )
    head_coef = (-metadata.bias_scale * metadata.slopes.float())[None, :, None]  # (1, H, 1)
    t_col = metadata.t.float()[:, None]  # (B, 1)

    running_max = q.new_full((batch, heads, seq, 1), float("-inf"))
    running_sum = q.new_zeros((batch, heads, seq, 1))
    acc_k = q.new_zeros((batch, heads, seq, dim))
    acc_v = q.new_zeros((batch, heads, seq, dim))

    for start in range(0, hist_len, block_size):
        stop = min(start + block_size, hist_len)
        k_block = k_hist[:, :, start:stop].float()
        v_block = v_hist[:, :, start:stop].float()
        # Bias and mask folded into one small (B, H, 1, blk) tensor: invalid tokens get -inf.
        gap = (t_col - hist_time[:, start:stop].float()).abs()  # (B, blk)
        bias = (head_coef * gap[:, None, :]).masked_fill(
            ~hist_valid[:, None, start:stop], float("-inf")
        )
        # scores = scale * q @ k^T + bias, as one fused op: (B, H, S, blk)
        scores = torch.baddbmm(
            bias[:, :, None, :]
            .expand(batch, heads, seq, stop - start)
            .reshape(batch * heads, seq, stop - start),
            q.reshape(batch * heads, seq, dim),
            k_block.reshape(batch * heads, stop - start, dim).transpose(-1, -2),
            alpha=scale,
        ).view(batch, heads, seq, stop - start)

        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        # While a row has seen no valid token its max is -inf; shift by 0 instead so that
        # exp(-inf - shift) = 0 rather than exp(nan).
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(running_max - shift)
        # In place unless autograd needs the scores (amax's backward does).
        probs = torch.exp(scores - shift) if needs_grad else scores.sub_(shift).exp_()
        running_sum = running_sum * rescale + probs.sum(dim=-1, keepdim=True)
        acc_k = acc_k * rescale + probs @ k_block
        acc_v = acc_v * rescale + probs @ v_block
        running_max = new_max

    denom = torch.where(running_sum > 0, running_sum, torch.ones_like(running_sum))
    return (acc_k / denom).to(query.dtype), (acc_v / denom).to(query.dtype)
