"""Surprise-based event segmentation: ``s_t = -log p(x_t | x_<t)`` and its threshold.

A boundary is the index of the first token of a new event. Boundaries returned here are the
interior split points ``0 < b < T`` of one chunk, strictly increasing: the first event starts at
0 and the last one ends at T.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from memory.episodic.checks import check_int
from memory.numbers import is_int, is_real


def token_surprise(logits: Tensor, input_ids: Tensor, prev_logits: Tensor | None = None) -> Tensor:
    """Surprise of each token, fp32, shape ``(..., T)``.

    ``logits`` (..., T, V) is a causal LM's output for ``input_ids`` (..., T): ``logits[t]``
    predicts token ``t + 1``. So ``s[t] = -log_softmax(logits[t - 1])[input_ids[t]]`` for
    ``t >= 1``. The first token has no prediction in this chunk: ``s[0]`` uses ``prev_logits``
    (..., V), the previous chunk's last logits, when given, else it is 0 (it never starts an
    event of its own: a chunk's first token is never an interior boundary).
    """
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., T, V), got shape {tuple(logits.shape)}")
    if input_ids.shape != logits.shape[:-1]:
        raise ValueError(
            f"input_ids shape {tuple(input_ids.shape)} must equal logits shape without the "
            f"vocabulary axis {tuple(logits.shape[:-1])}"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    vocab = logits.shape[-1]
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids must lie in [0, {vocab}) (the logits' vocabulary)")
    ids = input_ids.long()
    if ids.shape[-1] == 0:
        return torch.zeros(ids.shape, dtype=torch.float32, device=logits.device)
    if prev_logits is None:
        first = torch.zeros(*ids.shape[:-1], 1, dtype=torch.float32, device=logits.device)
    else:
        if prev_logits.shape != (*logits.shape[:-2], vocab):
            raise ValueError(
                f"prev_logits must be (..., V) = {(*logits.shape[:-2], vocab)}, got "
                f"{tuple(prev_logits.shape)}"
            )
        first = _nll(prev_logits.unsqueeze(-2), ids[..., :1])
    rest = _nll(logits[..., :-1, :], ids[..., 1:])
    return torch.cat([first, rest], dim=-1)


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    """``logsumexp(logits) - logits[target]`` in fp32: (..., N, V), (..., N) -> (..., N)."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(logits, dim=-1) - picked


def surprise_threshold(
    surprise: Tensor, gamma: float, window: int, context: Tensor | None = None
) -> Tensor:
    """Threshold ``mu_t + gamma * sigma_t`` per token, float64, shape (T,).

    ``mu_t`` and ``sigma_t`` (population std, ddof=0) are taken over the ``window`` surprises
    just before t, never including ``s_t`` itself: ``s[max(0, t - window) : t]`` of the
    sequence ``context ++ surprise`` (``context``: surprises of the tokens just before this
    chunk, for continuity across chunks). Where no previous surprise exists the threshold is
    +inf.
    """
    values = _check_surprise(surprise, "surprise")
    if not is_real(gamma) or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    check_int("window", window, 1)
    history = (
        _check_surprise(context, "context")[-window:]
        if context is not None
        else values.new_zeros(0)
    )
    full = torch.cat([history, values])
    n_hist, length = history.numel(), values.numel()
    # Row t holds the `window` values before token t of `full` (zero-padded on the left).
    padded = torch.cat([full.new_zeros(window), full])
    positions = torch.arange(length) + n_hist
    windows = padded.unfold(0, window, 1)[positions]
    counts = torch.clamp(positions, max=window).to(torch.float64)
    valid = torch.arange(window).unsqueeze(0) >= (window - positions).unsqueeze(1)
    safe_counts = counts.clamp_min(1.0)
    mean = (windows * valid).sum(1) / safe_counts
    var = (((windows - mean.unsqueeze(1)) * valid) ** 2).sum(1) / safe_counts
    threshold = mean + gamma * var.sqrt()
    return torch.where(counts > 0, threshold, torch.full_like(threshold, float("inf")))


def surprise_boundaries(
    surprise: Tensor,
    gamma: float,
    window: int,
    min_size: int = 1,
    max_size: int | None = None,
    context: Tensor | None = None,
) -> list[int]:
    """Event boundaries of one chunk from its surprises (T,).

    1. Candidates: every t with ``s_t > mu_t + gamma * sigma_t`` (see ``surprise_threshold``).
    2. Left to right, a candidate is kept if it is at least ``min_size`` tokens after the last
       kept boundary (or 0) and at least ``min_size`` before T.
    3. Every event longer than ``max_size`` is cut into ``ceil(L / max_size)`` pieces of equal
       length (+-1). Pieces are >= ceil(max_size / 2), so ``min_size <= ceil(max_size / 2)`` is
       required. A chunk shorter than ``min_size`` is a single event.
    """
    threshold = surprise_threshold(surprise, gamma, window, context)
    length = surprise.numel()
    _check_sizes(min_size, max_size)
    values = surprise.detach().to("cpu", torch.float64).reshape(-1)
    candidates = torch.nonzero(values > threshold).flatten().tolist()
    kept: list[int] = []
    last = 0
    for t in candidates:
        if t - last >= min_size and length - t >= min_size:
            kept.append(t)
            last = t
    if max_size is None:
        return kept
    return split_long_events(kept, length, max_size)


def split_long_events(boundaries: Sequence[int], length: int, max_size: int) -> list[int]:
    """Add boundaries cutting each event longer than ``max_size`` into equal pieces (+-1)."""
    edges = [0, *boundaries, length]
    result: list[int] = []
    for start, end in itertools.pairwise(edges):
        size = end - start
        pieces = -(-size // max_size)
        result.extend(start + (j * size) // pieces for j in range(1, pieces))
        if end != length:
            result.append(end)
    return result


def _check_surprise(values: Tensor, name: str) -> Tensor:
    if not isinstance(values, Tensor) or values.dim() != 1:
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"{name} must be a 1-D tensor (T,), got {shape}")
    out = values.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite")
    return out


def _check_sizes(min_size: int, max_size: int | None) -> None:
    check_int("min_size", min_size, 1)
    if max_size is None:
        return
    if not is_int(max_size) or max_size < 1:
        raise ValueError(f"max_size must be an int >= 1 or None, got {max_size!r}")
    if min_size > (max_size + 1) // 2:
        raise ValueError(
            f"min_size ({min_size}) must be <= ceil(max_size / 2) ({(max_size + 1) // 2}) so "
            "that cutting long events keeps every piece >= min_size"
        )
