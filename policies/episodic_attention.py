"""The attention ``EpisodicLM`` computes in place of a layer's own: projections and one softmax.

Shapes: Hq = query heads, H = KV heads (Hq = G * H; query head ``h * G + g`` reads KV head
``h``, as transformers' ``repeat_kv``; H = 1 is multi-query attention), D = head dim, T = the
chunk's tokens, S = assembled keys (context + chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.attention_adapters import AttentionAdapter, HeadLayout


def project(
    attention: nn.Module, adapter: AttentionAdapter, hidden: Tensor, head_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-RoPE q (Hq, T, D), k and v (H, T, D) of ``hidden`` (1, T, hidden), through the
    module's projections and, where the family has them, its per-head q/k norms."""
    out = []
    for projection, source, layout in (
        ("q_proj", adapter.query_module, adapter.query_layout),
        ("k_proj", adapter.key_module, adapter.key_layout),
        ("v_proj", adapter.value_module, adapter.value_layout),
    ):
        heads = getattr(attention, projection)(hidden)[0].view(hidden.shape[1], -1, head_dim)
        if source != projection:  # a per-head norm over D (qwen3, gemma3 q_norm/k_norm)
            assert layout is not HeadLayout.FLAT
            heads = getattr(attention, source)(heads)
        out.append(heads.transpose(0, 1))
    return out[0], out[1], out[2]


def visibility(query_index: Tensor, key_index: Tensor, window: int | None) -> Tensor:
    """(T, S) bool: which assembled key each query may attend, from their stream indices
    (T,) and (S,): keys up to the query itself (causal) and, for a sliding-window layer,
    fewer than ``window`` tokens back (transformers' ``kv_idx > q_idx - sliding_window``)."""
    distance = query_index[:, None] - key_index[None, :]
    visible = distance >= 0
    if window is not None:
        visible &= distance < window
    return visible


def attend(
    query: Tensor,
    keys: Tensor,
    values: Tensor,
    visible: Tensor,
    scale: float,
    softcap: float | None = None,
) -> Tensor:
    """One fp32 softmax of ``query`` (Hq, T, D) over ``keys``/``values`` (H, S, D) where
    ``visible`` (T, S); output (Hq, T, D). ``softcap``: Gemma 2's attention logit soft-capping
    (``cap * tanh(score / cap)`` before the mask), which SDPA cannot do."""
    if softcap is None:
        out = F.scaled_dot_product_attention(
            query[None], keys[None], values[None], attn_mask=visible, scale=scale, enable_gqa=True
        )
        return out[0]
    group = query.shape[0] // keys.shape[0]
    keys = keys.repeat_interleave(group, dim=0)
    values = values.repeat_interleave(group, dim=0)
    scores = query @ keys.transpose(1, 2) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ values
