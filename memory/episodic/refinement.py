"""Boundary refinement on the key-similarity graph of one chunk (EM-LLM).

``A`` (T, T) is a symmetric, non-negative similarity of the chunk's tokens (``key_similarity``).
Each boundary ``b`` between events ``[p, b)`` and ``[b, n)`` moves to the split ``c`` of the
subgraph ``[p, n)`` into ``S1 = [p, c)`` and ``S2 = [c, n)`` that scores best. With block sums
``w11 = A[S1, S1]``, ``w22 = A[S2, S2]``, ``w12 = A[S1, S2]``, ``w21 = A[S2, S1]`` (diagonal
included), volumes ``vol1 = w11 + w12``, ``vol2 = w22 + w21`` and ``m2 = vol1 + vol2``:

- modularity (Newman, two communities, degrees inside the subgraph), maximised:
  ``Q = (w11 + w22) / m2 - (vol1^2 + vol2^2) / m2^2`` (0 when ``m2 = 0``);
- conductance, minimised: ``phi = ((w12 + w21) / 2) / min(vol1, vol2)`` (1 when the smaller
  volume is 0).

Candidates ``c`` keep both events within ``[min_size, max_size]`` and ``|c - b| <= window``. Ties
go to the candidate closest to ``b``, then to the earlier one. Order: boundaries 0, 2, 4, ...
first (their subgraphs are disjoint, so they are refined at once), then 1, 3, 5, ... against
their refined neighbours (EM-LLM sweeps left to right; this order is one sweep of the same
local search, and lets each pass be vectorised). The number of events never changes.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from memory.episodic.checks import check_int

Metric = Literal["modularity", "conductance", "none"]
SimilarityKind = Literal["cosine", "dot"]

_METRICS = ("modularity", "conductance", "none")


def key_similarity(
    keys: Tensor, heads: Sequence[int] | None = None, kind: SimilarityKind = "cosine"
) -> Tensor:
    """Similarity graph ``A`` (T, T) fp32 of a chunk's pre-RoPE keys (H, T, D) or (T, D).

    Per head: cosine similarity (``kind="cosine"``) or scaled dot product ``<k_i, k_j> / sqrt(D)``
    (``kind="dot"``); averaged over ``heads`` (default: all), symmetrised exactly and clamped to
    >= 0 (anti-similar tokens are unrelated, not negatively linked, so the graph stays valid).
    Pre-RoPE keys compare content, not position.
    """
    if keys.dim() == 2:
        keys = keys.unsqueeze(0)
    if keys.dim() != 3:
        raise ValueError(f"keys must be (H, T, D) or (T, D), got shape {tuple(keys.shape)}")
    if heads is not None:
        if not heads or any(isinstance(h, bool) or not 0 <= h < keys.shape[0] for h in heads):
            raise ValueError(f"heads must be a non-empty list of indices < {keys.shape[0]}")
        keys = keys[list(heads)]
    keys = keys.float()
    if kind == "cosine":
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = 1.0
    elif kind == "dot":
        scale = keys.shape[-1] ** -0.5
    else:
        raise ValueError(f"kind must be 'cosine' or 'dot', got {kind!r}")
    sim = (keys @ keys.transpose(-1, -2)).mean(0) * scale
    return ((sim + sim.T) * 0.5).clamp_min(0.0)


def refine_boundaries(
    A: Tensor,
    boundaries: Sequence[int],
    metric: Metric = "modularity",
    min_size: int = 1,
    window: int | None = None,
    max_size: int | None = None,
) -> list[int]:
    """Refined boundaries (same count), vectorised with prefix sums, O(T^2) per chunk.

    Per pass, each row's slice inside its subgraph, ``A[i, start:end]``, is gathered and
    cumulatively summed (row prefix sums: any partial row sum in O(1)); 1-D cumulative sums of
    those over the rows then give ``w11`` and ``vol1`` of every candidate split of every
    boundary in O(1), using the symmetry of ``A`` (``A[S, S] = 2 * lower part + diagonal``,
    ``w12 = w21 = vol1 - w11``, ``w22 = total - vol1 - w12``). Work: O(T^2) to validate ``A``,
    O(T * largest subgraph) to refine. Runs on CPU (numpy); ``A`` elsewhere is copied.
    """
    sim, bounds = _validated_arguments(A, boundaries, metric, min_size, window, max_size)
    _check_graph(sim)
    if metric == "none" or not bounds:
        return bounds
    values = sim.numpy()
    edges = np.array([0, *bounds, sim.shape[0]], dtype=np.int64)
    for parity in _parities(len(bounds)):
        _refine_pass(values, edges, parity, metric, min_size, window, max_size)
    return edges[1:-1].tolist()


def _refine_pass(
    sim: np.ndarray,
    edges: np.ndarray,
    parity: int,
    metric: Metric,
    min_size: int,
    window: int | None,
    max_size: int | None,
) -> None:
    """Move the boundaries ``edges[1 + parity :: 2]`` (disjoint subgraphs), in place."""
    length = sim.shape[0]
    count = (len(edges) - 2 - parity + 1) // 2
    stop = parity + 2 * count
    starts, here, ends = (
        edges[parity:stop:2],
        edges[parity + 1 : stop + 1 : 2],
        edges[parity + 2 : stop + 2 : 2],
    )
    low, high = _candidate_bounds(starts, here, ends, min_size, window, max_size)

    # The subgraphs [start, end) of one pass tile the rows [first, last) without gaps. Row i's
    # part inside its subgraph, A[i, start:end], is gathered left-aligned into a block whose
    # padding (clipped indices) only lands after the prefixes that are read.
    first, last = int(starts[0]), int(ends[-1])
    rows, local = np.arange(first, last), np.arange(last - first)
    sizes = ends - starts
    row_start = np.repeat(starts, sizes)
    index_type = np.int32 if length * length < 2**31 else np.int64  # int32: faster gathers
    flat = (rows * length + row_start).astype(index_type)[:, None] + np.arange(
        int(sizes.max()), dtype=index_type
    )
    block = torch.from_numpy(sim.take(flat, mode="clip"))
    row_prefix = torch.cumsum(block, dim=1, dtype=torch.float64).numpy()
    through_diag = row_prefix[local, rows - row_start]  # sum_{j in [start, i]} A_ij
    row_sum = row_prefix[local, np.repeat(sizes - 1, sizes)]  # sum_{j in [start, end)} A_ij
    # Symmetry: A[S, S] = sum over rows i in S of (2 * sum_{j in S, j < i} A_ij + A_ii).
    cum_inner, cum_volume = np.zeros(last - first + 1), np.zeros(last - first + 1)
    np.cumsum(2.0 * through_diag - sim.diagonal()[first:last], out=cum_inner[1:])
    np.cumsum(row_sum, out=cum_volume[1:])

    splits = low[:, None] + np.arange(int((high - low).max()) + 1)
    valid = splits <= high[:, None]
    at_split = np.minimum(splits, high[:, None]) - first
    at_start, at_end = (starts - first)[:, None], (ends - first)[:, None]
    w11 = cum_inner[at_split] - cum_inner[at_start]
    vol1 = cum_volume[at_split] - cum_volume[at_start]
    w12 = vol1 - w11  # = w21 by symmetry
    w22 = (cum_volume[at_end] - cum_volume[at_start]) - vol1 - w12
    score = np.where(valid, partition_score(w11, w22, w12, w12, metric), -np.inf)
    is_best = valid & (score == score.max(axis=1, keepdims=True))
    distance = np.where(is_best, np.abs(splits - here[:, None]), length)
    here[:] = splits[np.arange(count), distance.argmin(axis=1)]


def refine_boundaries_loop(
    A: Tensor,
    boundaries: Sequence[int],
    metric: Metric = "modularity",
    min_size: int = 1,
    window: int | None = None,
    max_size: int | None = None,
) -> list[int]:
    """Reference for ``refine_boundaries``: scores every split with explicit block sums."""
    sim, bounds = _validated_arguments(A, boundaries, metric, min_size, window, max_size)
    _check_graph(sim)
    sim = sim.to(torch.float64)
    if metric == "none":
        return bounds
    length = sim.shape[0]
    for parity in _parities(len(bounds)):
        for i in range(parity, len(bounds), 2):
            start = bounds[i - 1] if i > 0 else 0
            end = bounds[i + 1] if i + 1 < len(bounds) else length
            here = bounds[i]
            low, high = _candidate_bounds(
                np.array([start]), np.array([here]), np.array([end]), min_size, window, max_size
            )
            best_split, best_key = here, None
            for split in range(int(low[0]), int(high[0]) + 1):
                w11 = sim[start:split, start:split].sum().item()
                w22 = sim[split:end, split:end].sum().item()
                w12 = sim[start:split, split:end].sum().item()
                w21 = sim[split:end, start:split].sum().item()
                w = np.array([w11, w22, w12, w21])  # float64 scalars: 0 / 0 gives nan, not raise
                score = float(partition_score(w[0], w[1], w[2], w[3], metric))
                key = (score, -abs(split - here), -split)
                if best_key is None or key > best_key:
                    best_split, best_key = split, key
            bounds[i] = best_split
    return bounds


def partition_score(
    w11: np.ndarray | float,
    w22: np.ndarray | float,
    w12: np.ndarray | float,
    w21: np.ndarray | float,
    metric: Metric,
) -> np.ndarray:
    """Score (higher is better) of splits from block sums (numpy arrays or float64 scalars)."""
    vol1 = w11 + w12
    vol2 = w22 + w21
    if metric == "modularity":
        total = vol1 + vol2
        positive = total > 0
        safe = np.where(positive, total, 1.0)  # no 0 / 0; identical where total > 0
        q = (w11 + w22) / safe - (vol1 * vol1 + vol2 * vol2) / (safe * safe)
        return np.where(positive, q, 0.0)
    smaller = np.minimum(vol1, vol2)
    positive = smaller > 0
    safe = np.where(positive, smaller, 1.0)
    return np.where(positive, -(((w12 + w21) * 0.5) / safe), -1.0)


def _candidate_bounds(
    starts: np.ndarray,
    here: np.ndarray,
    ends: np.ndarray,
    min_size: int,
    window: int | None,
    max_size: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest split of each subgraph that keeps sizes and the window."""
    low, high = starts + min_size, ends - min_size
    if window is not None:
        low, high = np.maximum(low, here - window), np.minimum(high, here + window)
    if max_size is not None:
        low, high = np.maximum(low, ends - max_size), np.minimum(high, starts + max_size)
    return low, high


def _parities(count: int) -> list[int]:
    """Boundaries 0, 2, 4, ... then 1, 3, 5, ...: within a pass the subgraphs are disjoint."""
    return [parity for parity in (0, 1) if count > parity]


def _validated_arguments(
    A: Tensor,
    boundaries: Sequence[int],
    metric: str,
    min_size: int,
    window: int | None,
    max_size: int | None,
) -> tuple[Tensor, list[int]]:
    """``A`` as a contiguous CPU fp32/fp64 tensor and the boundaries as a list, or ValueError."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if not isinstance(A, Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
        shape = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"A must be a square (T, T) tensor with T >= 1, got {shape}")
    if not A.dtype.is_floating_point:
        raise ValueError(f"A must be a floating-point tensor, got {A.dtype}")
    check_int("min_size", min_size, 1)
    if window is not None:
        check_int("window", window, 0)
    if max_size is not None:
        check_int("max_size", max_size, 1)
    sim = A.detach().to("cpu").contiguous()
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.float()
    length = sim.shape[0]
    try:
        if any(isinstance(b, bool) for b in boundaries):
            raise TypeError("bool")
        bounds = [operator.index(b) for b in boundaries]
    except TypeError as err:
        raise ValueError(f"boundaries must be a sequence of ints, got {boundaries!r}") from err
    edges = [0, *bounds, length]
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    if any(size <= 0 for size in sizes):
        raise ValueError(f"boundaries must be strictly increasing within (0, {length}): {bounds}")
    if bounds and min(sizes) < min_size:
        event = sizes.index(min(sizes))
        raise ValueError(f"event {event} has {sizes[event]} tokens, fewer than min_size={min_size}")
    if max_size is not None and max(sizes) > max_size:
        event = sizes.index(max(sizes))
        raise ValueError(f"event {event} has {sizes[event]} tokens, more than max_size={max_size}")
    return sim, bounds


def _check_graph(sim: Tensor) -> None:
    """ValueError unless ``sim`` is finite, non-negative and (to tolerance) symmetric."""
    # Heavy reductions by torch and BLAS, the rest by numpy: the fastest on one CPU thread.
    row_sums = sim.sum(dim=1).numpy()
    column_sums = (torch.ones(1, sim.shape[0], dtype=sim.dtype) @ sim).numpy()[0]
    if not (sim.numpy().min() >= 0 and np.isfinite(row_sums).all()):
        raise ValueError("A must be finite and non-negative (clamp similarities to >= 0)")
    # Equal row and column sums is necessary for symmetry and, unlike A == A.T, needs no
    # transposed (cache-hostile) read, which would cost more than the refinement itself.
    if np.abs(row_sums - column_sums).max() > 1e-4 * max(float(row_sums.max()), 1e-30):
        raise ValueError("A must be symmetric (a similarity graph); use (A + A.T) / 2")
