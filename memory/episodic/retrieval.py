"""Two-stage event retrieval (EM-LLM): k_s similar events, then k_c temporal neighbours.

Shapes: Hq = query heads, H = KV heads (Hq = G * H, query head h * G + g uses KV head h, as in
transformers' ``repeat_kv``), Tq = queries of the chunk, D = head dim, E = events, R = the most
representatives of one event.

Score of event e: ``sum_h max_r <mean_q q_(h, q), k_(e, h, r)> / sqrt(D)``: per KV head, the
representative key closest to the chunk's mean query (over its tokens and the query heads of
that KV head; the mean over queries of the dot product equals the dot product with the mean
query), summed over heads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import torch
from torch import Tensor

from memory.episodic.checks import check_int


def pack_representatives(events_repr: Mapping[int, Tensor]) -> tuple[list[int], Tensor, Tensor]:
    """Event ids (ascending), representatives (E, H, R, D) zero-padded, valid mask (E, R)."""
    if not events_repr:
        raise ValueError("events_repr is empty")
    ids = sorted(events_repr)
    first = events_repr[ids[0]]
    if first.dim() != 3:
        raise ValueError(f"representatives must be (H, R, D), got {tuple(first.shape)}")
    heads, _, dim = first.shape
    most = 0
    for event_id in ids:
        reps = events_repr[event_id]
        if reps.dim() != 3 or reps.shape[0] != heads or reps.shape[2] != dim or reps.shape[1] < 1:
            raise ValueError(
                f"representatives of event {event_id} must be (H={heads}, R>=1, D={dim}), got "
                f"{tuple(reps.shape)}"
            )
        most = max(most, reps.shape[1])
    packed = first.new_zeros(len(ids), heads, most, dim, dtype=torch.float32)
    valid = torch.zeros(len(ids), most, dtype=torch.bool, device=first.device)
    for row, event_id in enumerate(ids):
        reps = events_repr[event_id]
        packed[row, :, : reps.shape[1]] = reps.to(packed.device, torch.float32)
        valid[row, : reps.shape[1]] = True
    return ids, packed, valid


def event_scores(query: Tensor, representatives: Tensor, valid: Tensor | None = None) -> Tensor:
    """Similarity (E,) fp32 of the chunk's queries (Hq, Tq, D) to each event (E, H, R, D)."""
    if query.dim() != 3 or representatives.dim() != 4:
        raise ValueError(
            f"query must be (Hq, Tq, D) and representatives (E, H, R, D), got "
            f"{tuple(query.shape)} and {tuple(representatives.shape)}"
        )
    q_heads, tokens, dim = query.shape
    _, heads, most, rep_dim = representatives.shape
    if rep_dim != dim or heads == 0 or q_heads % heads != 0 or tokens == 0:
        raise ValueError(
            f"query (Hq={q_heads}, Tq={tokens}, D={dim}) does not fit representatives "
            f"(H={heads}, D={rep_dim}): need equal D, Tq >= 1 and Hq a multiple of H"
        )
    mean_query = query.float().reshape(heads, q_heads // heads * tokens, dim).mean(1)
    mean_query = mean_query.to(representatives.device)
    per_rep = torch.einsum("hd,ehrd->ehr", mean_query, representatives.float()) * dim**-0.5
    if valid is not None:
        if valid.shape != (representatives.shape[0], most):
            raise ValueError(f"valid must be (E, R), got {tuple(valid.shape)}")
        per_rep = per_rep.masked_fill(~valid.to(per_rep.device).unsqueeze(1), float("-inf"))
    return per_rep.amax(dim=2).sum(dim=1)


def retrieve_events(
    query: Tensor,
    events_repr: Mapping[int, Tensor],
    event_sizes: Mapping[int, int],
    k_similar: int,
    k_contiguous: int,
    budget_tokens: int,
    contiguity_queue: deque[int] | None = None,
) -> list[int]:
    """Ids (ascending, i.e. temporal order) of the events to attend for this chunk.

    1. The ``k_similar`` best-scoring events (``event_scores``; ties: smaller id) that fit in
       the remaining ``budget_tokens``; an event that does not fit is skipped, not truncated.
    2. They enter ``contiguity_queue`` (a bounded deque of recently retrieved ids, most recent
       right; the best event of this chunk ends rightmost). Walking it from the most recent id,
       each id's following (id + 1), then preceding (id - 1) event is added if it exists, is not
       chosen yet and fits, until ``k_contiguous`` neighbours are added.

    ``events_repr``: event id -> representatives (H, R_e, D), the candidates (events still in
    the local window should not be offered). ``event_sizes``: id -> tokens. The queue is
    updated in place and carries over to the next chunk; without one, only this chunk's similar
    events give neighbours.
    """
    for name, value in (
        ("k_similar", k_similar),
        ("k_contiguous", k_contiguous),
        ("budget_tokens", budget_tokens),
    ):
        check_int(name, value, 0)
    if contiguity_queue is not None and contiguity_queue.maxlen is None:
        raise ValueError("contiguity_queue must be bounded: deque(maxlen=...)")
    missing = [e for e in events_repr if e not in event_sizes]
    if missing:
        raise ValueError(f"event_sizes lacks events {missing[:5]}")
    if any(isinstance(event_sizes[e], bool) or event_sizes[e] < 1 for e in events_repr):
        raise ValueError("event_sizes must be ints >= 1")
    if not events_repr:
        return []
    ids, packed, valid = pack_representatives(events_repr)
    return retrieve_packed(
        query,
        ids,
        packed,
        valid,
        event_sizes,
        k_similar,
        k_contiguous,
        budget_tokens,
        contiguity_queue,
    )


def retrieve_packed(
    query: Tensor,
    ids: list[int],
    packed: Tensor,
    valid: Tensor,
    event_sizes: Mapping[int, int],
    k_similar: int,
    k_contiguous: int,
    budget_tokens: int,
    contiguity_queue: deque[int] | None = None,
) -> list[int]:
    """``retrieve_events`` on candidates already packed by ``pack_representatives`` (ids
    ascending, representatives (E, H, R, D), valid (E, R)); arguments are not re-validated, so
    a caller that retrieves every step packs once per change of its events."""
    scores = event_scores(query, packed, valid).cpu()
    ranking = torch.sort(scores, descending=True, stable=True).indices.tolist()
    remaining = budget_tokens
    similar: list[int] = []
    for row in ranking:
        if len(similar) >= k_similar:
            break
        size = int(event_sizes[ids[row]])
        if size <= remaining:
            similar.append(ids[row])
            remaining -= size

    queue = contiguity_queue if contiguity_queue is not None else deque(maxlen=len(similar) or 1)
    for event_id in reversed(similar):
        if event_id in queue:
            queue.remove(event_id)
        queue.append(event_id)
    chosen = set(similar)
    candidates = set(ids)
    added = 0
    for event_id in reversed(queue):
        for neighbour in (event_id + 1, event_id - 1):
            if added >= k_contiguous:
                break
            if neighbour not in candidates or neighbour in chosen:
                continue
            size = int(event_sizes[neighbour])
            if size <= remaining:
                chosen.add(neighbour)
                remaining -= size
                added += 1
    return sorted(chosen)
