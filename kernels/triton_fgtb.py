"""Fused flash-style Triton kernel for FGTB retrieval (CUDA, or CPU under TRITON_INTERPRET=1).

One program handles BLOCK_S query rows of one (batch, head) pair and walks the history in blocks
of BLOCK_L tokens: the frame-gap bias is computed in registers from hist_time, t and the head's
slope, invalid tokens are masked, and the online softmax accumulates the K and V contexts in fp32.
No score or bias matrix ever reaches global memory. Forward only (no autograd).

This module imports triton at import time; `kernels.dispatch` imports it only when the Triton
backend is asked for, so `import kernels` works without triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.dispatch import TRITON_MAX_HEAD_DIM
from kernels.metadata import FGTBMetadata


@triton.jit
def _fgtb_fwd_kernel(
    q_ptr, k_ptr, v_ptr, time_ptr, valid_ptr, t_ptr, slopes_ptr, k_out_ptr, v_out_ptr,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_kl, stride_kd,
    stride_vb, stride_vh, stride_vl, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_time_b, stride_time_l, stride_valid_b, stride_valid_l,
    num_heads, seq_len, hist_len, head_dim,
    scale, bias_scale,
    BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    # int64 batch/head indices: b * stride_b can pass 2^31 for large batches of long histories.
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)

    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    offs_l = tl.arange(0, BLOCK_L)
    row_ok = offs_s < seq_len
    dim_ok = offs_d < head_dim

    q_ptrs = q_ptr + b * stride_qb + h * stride_qh
    q_ptrs += offs_s[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(DOT_DTYPE)

    t_now = tl.load(t_ptr + b).to(tl.float32)
    head_coef = -bias_scale * tl.load(slopes_ptr + h).to(tl.float32)

    running_max = tl.full([BLOCK_S], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc_k = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)

    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    for start in range(0, hist_len, BLOCK_L):
        offs_hist = start + offs_l
        in_hist = offs_hist < hist_len
        tile_mask = in_hist[:, None] & dim_ok[None, :]
        k_ptrs = k_base + offs_hist[:, None] * stride_kl + offs_d[None, :] * stride_kd
        v_ptrs = v_base + offs_hist[:, None] * stride_vl + offs_d[None, :] * stride_vd
        k = tl.load(k_ptrs, mask=tile_mask, other=0.0).to(DOT_DTYPE)  # (BLOCK_L, BLOCK_D)
        v = tl.load(v_ptrs, mask=tile_mask, other=0.0).to(DOT_DTYPE)

        tau = tl.load(time_ptr + b * stride_time_b + offs_hist * stride_time_l, mask=in_hist)
        valid = tl.load(valid_ptr + b * stride_valid_b + offs_hist * stride_valid_l, mask=in_hist)
        bias = head_coef * tl.abs(t_now - tau.to(tl.float32))  # (BLOCK_L,)

        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale + bias[None, :]
        scores = tl.where((in_hist & (valid != 0))[None, :], scores, float("-inf"))

        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # Rows that have seen no valid token keep max = -inf; shift by 0 so exp gives 0, not nan.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        rescale = tl.exp(running_max - shift)
        probs = tl.exp(scores - shift[:, None])
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        probs_in = probs.to(DOT_DTYPE)  # fp16/bf16: tensor-core dot, fp32 accumulation
        acc_k = acc_k * rescale[:, None] + tl.dot(probs_in, k, input_precision="ieee")
        acc_v = acc_v * rescale[:, None] + tl.dot(probs_in, v, input_precision="ieee")
        running_max = new_max

    denom = tl.where(running_sum > 0, running_sum, 1.0)
    acc_k = acc_k / denom[:, None]
    acc_v = acc_v / denom[:, None]

    out_offsets = b * stride_ob + h * stride_oh
    out_offsets += offs_s[:, None] * stride_os + offs_d[None, :] * stride_od
    out_mask = row_ok[:, None] & dim_ok[None, :]
    tl.store(k_out_ptr + out_offsets, acc_k.to(k_out_ptr.dtype.element_ty), mask=out_mask)
    tl.store(v_out_ptr + out_offsets, acc_v.to(v_out_ptr.dtype.element_ty), mask=out_mask)


def _launch_config(seq_len: int, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_S, BLOCK_L, BLOCK_D, num_warps); tl.dot needs every block dim >= 16."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_s = max(16, min(64, triton.next_power_of_2(seq_len)))
    # Two fp32 accumulators of BLOCK_S x BLOCK_D live in registers: shrink tiles for big D.
    block_l = 64 if block_d <= 64 else 32
    num_warps = 4 if block_d <= 64 else 8
    return block_s, block_l, block_d, num_warps


def _dot_dtype(query: Tensor) -> tl.dtype:
    """Operand dtype of the in-kernel matmuls: the query's dtype.

    Exception: the CPU interpreter computes tl.dot on bfloat16 wrongly (triton 3.9), so there
    bf16 operands are upcast to fp32; on CUDA bf16 stays bf16.
    """
    if query.dtype == torch.bfloat16 and query.device.type != "cuda":
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}.get(query.dtype, tl.float32)


def fgtb_triton(
    query: Tensor, k_hist: Tensor, v_hist: Tensor, metadata: FGTBMetadata
) -> tuple[Tensor, Tensor]:
    """Fused FGTB retrieval; same result as `kernels.reference.fgtb_reference`.

    Shapes: query (B, H, S, D); k_hist, v_hist (B, H, L, D); the (B, L) times and mask, (B,)
    current time and (H,) slopes in ``metadata``. D <= 256. Returns (k_ctx, v_ctx), each
    (B, H, S, D) in query.dtype; k_hist / v_hist are read in query.dtype, accumulation is fp32.
    """
    batch, heads, seq, dim = query.shape
    hist_len = k_hist.shape[2]
    if dim > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"triton backend supports head dim <= {TRITON_MAX_HEAD_DIM}, got {dim}")
    scale = metadata.score_scale(dim)

    k_out = torch.empty_like(query, memory_format=torch.contiguous_format)
    v_out = torch.empty_like(k_out)
    if k_out.numel() == 0:
        return k_out, v_out

    hist_time = metadata.hist_time.float()
    valid = metadata.hist_valid.to(torch.uint8)
    t = metadata.t.float().contiguous()
    slopes = metadata.slopes.float().contiguous()
    block_s, block_l, block_d, num_warps = _launch_config(seq, dim)
    grid = (batch * heads, triton.cdiv(seq, block_s))
    _fgtb_fwd_kernel[grid](
        query, k_hist, v_hist, hist_time, valid, t, slopes, k_out, v_out,
        *query.stride(), *k_hist.stride(), *v_hist.stride(), *k_out.stride(),
        *hist_time.stride(), *valid.stride(),
        heads, seq, hist_len, dim,
        float(scale), float(metadata.bias_scale),
        BLOCK_S=block_s, BLOCK_L=block_l, BLOCK_D=block_d,
        DOT_DTYPE=_dot_dtype(query),
        num_warps=num_warps,
    )  # fmt: skip
    return k_out, v_out
