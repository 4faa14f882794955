"""Rotary position embedding (RoPE) helpers, as transformers' ``modeling_*.py`` apply them."""

from __future__ import annotations

import torch
from torch import Tensor


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding of ``x`` (..., T, D) with tables ``cos``/``sin`` (T, D)."""
    return x * cos + rotate_half(x) * sin
