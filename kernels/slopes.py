"""ALiBi-style geometric slopes m_h, one per (KV) head."""

from __future__ import annotations

import math

import torch


def _power_of_two_slopes(num_heads: int) -> list[float]:
    # Geometric sequence starting at 2^(-8/n) with the same ratio: 2^(-8 i / n), i = 1..n.
    start = 2.0 ** (-8.0 / num_heads)
    return [start ** (i + 1) for i in range(num_heads)]


def _slopes(num_heads: int) -> list[float]:
    if num_heads & (num_heads - 1) == 0:
        return _power_of_two_slopes(num_heads)
    # ALiBi rule for n not a power of two: the slopes of the closest smaller power of two,
    # then every other slope of the next power of two, up to n heads in total.
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = _slopes(2 * closest)[0::2][: num_heads - closest]
    return _power_of_two_slopes(closest) + extra


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi geometric slopes, shape (num_heads,) float32.

    For 8 heads: 1/2, 1/4, ..., 1/256. For a head count that is not a power of two, the slopes
    of the closest smaller power of two followed by the odd-indexed slopes of the next one
    (the rule of Press et al., "Train Short, Test Long").
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    return torch.tensor(_slopes(num_heads), dtype=torch.float32)
