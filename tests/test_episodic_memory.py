"""Episodic event memory (EM-LLM), model-agnostic half: config, surprise, refinement,
representatives, retrieval and the event store."""

from __future__ import annotations

import itertools
import json
import math
import statistics
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import memory
from memory.episodic import (
    EpisodicConfig,
    Event,
    EventStore,
    TensorBacking,
    event_scores,
    key_similarity,
    pack_representatives,
    refine_boundaries,
    refine_boundaries_loop,
    representative_indices,
    retrieve_events,
    select_representatives,
    surprise_boundaries,
    surprise_threshold,
    token_surprise,
)
from memory.episodic.refinement import Metric

# ----------------------------------------------------------------------------- config


def test_config_defaults_are_valid_and_exported() -> None:
    config = memory.EpisodicConfig()
    assert config is not None and isinstance(config, EpisodicConfig)
    assert config.n_init + config.n_local + config.budget <= 2048  # fits a 2k context
    assert config.chunk_size <= config.n_local <= config.budget
    with pytest.raises(ValidationError):
        config.gamma = 2.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_local": 512, "budget": 256}, r"budget \(256\) must be >= n_local \(512\)"),
        ({"gamma": -0.5}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        (
            {"min_event_size": 64, "max_event_size": 32},
            r"min_event_size \(64\) must be <= max_event_size \(32\)",
        ),
        ({"min_event_size": 20, "max_event_size": 32}, r"ceil\(max_event_size / 2\)"),
        ({"chunk_size": 1024}, r"chunk_size \(1024\) must be <= n_local \(512\)"),
        ({"max_event_size": 2048, "budget": 1024}, r"max_event_size \(2048\) must be <= budget"),
        ({"k_contiguous": 2, "contiguity_queue": 0}, "contiguity_queue"),
        ({"refine_metric": "cut"}, "refine_metric"),
        ({"surprise_window": 1}, "surprise_window"),
        ({"n_repr": 0}, "n_repr"),
        ({"budgte": 10}, "budgte"),
        ({"n_local": "512"}, "n_local"),
        ({"n_init": True}, "n_init"),
    ],
)
def test_bad_configs_fail_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EpisodicConfig(**fields)


# ----------------------------------------------------------------------------- surprise


def test_token_surprise_matches_hand_computation() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [2.0, 1.0, 1.0], [0.3, 0.2, 0.1]])
    ids = torch.tensor([2, 1, 2, 0])

    def nll(row: list[float], target: int) -> float:
        return -(row[target] - math.log(sum(math.exp(x) for x in row)))

    rows = logits.tolist()
    expected = [0.0] + [nll(rows[t - 1], int(ids[t])) for t in range(1, 4)]
    got = token_surprise(logits, ids)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)

    prev = torch.tensor([0.0, 1.0, 2.0])
    with_prev = token_surprise(logits.bfloat16(), ids, prev_logits=prev)
    assert with_prev[0].item() == pytest.approx(nll([0.0, 1.0, 2.0], 2), abs=1e-2)
    batched = token_surprise(logits.expand(2, -1, -1), ids.expand(2, -1))
    assert batched.shape == (2, 4) and torch.allclose(batched[1], got)


def test_empty_and_tiny_chunks() -> None:
    assert token_surprise(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert surprise_boundaries(torch.zeros(0), 1.0, 4, max_size=4) == []
    assert surprise_boundaries(torch.tensor([0.0, 9.0]), 1.0, 4, min_size=2) == []
    assert surprise_threshold(torch.tensor([2.0]), 1.0, 4).tolist() == [math.inf]
    assert refine_boundaries(torch.ones(1, 1), []) == []


def test_token_surprise_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="input_ids shape"):
        token_surprise(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        token_surprise(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer"):
        token_surprise(torch.zeros(2, 3), torch.zeros(2))


SURPRISES = [1.0, 1.0, 1.0, 5.0, 1.0, 1.0, 9.0, 1.0]


def test_surprise_threshold_equals_hand_computed_window() -> None:
    window, gamma = 3, 1.0
    expected = [math.inf]
    for t in range(1, len(SURPRISES)):
        previous = SURPRISES[max(0, t - window) : t]
        expected.append(statistics.fmean(previous) + gamma * statistics.pstdev(previous))
    got = surprise_threshold(torch.tensor(SURPRISES), gamma, window)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[4] == pytest.approx(7 / 3 + math.sqrt(96 / 27))  # mean, population std


def test_surprise_boundaries_hand_example_and_min_size() -> None:
    surprise = torch.tensor(SURPRISES)
    assert surprise_boundaries(surprise, gamma=1.0, window=3) == [3, 6]
    # 6 would leave a last event of 2 < 3 tokens.
    assert surprise_boundaries(surprise, gamma=1.0, window=3, min_size=3) == [3]
    # A flat window has sigma = 0, so the jump at t = 3 passes any gamma; 9 at t = 6 does not.
    assert surprise_boundaries(surprise, gamma=10.0, window=3) == [3]
    # Surprises of the previous chunk: a spiky history raises the early thresholds
    # (t = 3: mean 2.6 and std 3.2 of [1, 9, 1, 1, 1], so 5 < 5.8).
    assert surprise_boundaries(surprise, gamma=1.0, window=5) == [3, 6]
    spiky = torch.tensor([9.0, 1.0, 9.0])
    assert surprise_boundaries(surprise, gamma=1.0, window=5, context=spiky) == [6]


def test_surprise_boundaries_cuts_long_events_evenly() -> None:
    flat = torch.ones(100)
    assert surprise_boundaries(flat, gamma=1.0, window=8, max_size=30) == [25, 50, 75]
    with pytest.raises(ValueError, match=r"ceil\(max_size / 2\)"):
        surprise_boundaries(flat, gamma=1.0, window=8, min_size=20, max_size=30)
    with pytest.raises(ValueError, match="gamma"):
        surprise_boundaries(flat, gamma=-1.0, window=8)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 20.0), min_size=1, max_size=120),
    min_size=st.integers(1, 6),
    extra=st.integers(0, 20),
    gamma=st.floats(0.0, 3.0),
)
def test_surprise_boundaries_keep_event_sizes(
    values: list[float], min_size: int, extra: int, gamma: float
) -> None:
    max_size = 2 * min_size - 1 + extra
    boundaries = surprise_boundaries(torch.tensor(values), gamma, 16, min_size, max_size)
    edges = [0, *boundaries, len(values)]
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    assert all(size <= max_size for size in sizes)
    if len(values) >= min_size:
        assert all(size >= min_size for size in sizes)


# ----------------------------------------------------------------------------- refinement


def block_similarity(sizes: list[int], inside: float = 1.0, outside: float = 0.05) -> torch.Tensor:
    length = sum(sizes)
    A = torch.full((length, length), outside)
    start = 0
    for size in sizes:
        A[start : start + size, start : start + size] = inside
        start += size
    return A


@pytest.mark.parametrize("metric", ["modularity", "conductance"])
@pytest.mark.parametrize("implementation", [refine_boundaries, refine_boundaries_loop])
def test_refinement_moves_misplaced_boundaries_to_block_edges(
    metric: str, implementation: Callable[..., list[int]]
) -> None:
    A = block_similarity([10, 15, 15, 12])  # true boundaries 10, 25, 40
    assert implementation(A, [7, 28, 37], metric) == [10, 25, 40]
    noisy = (A + 0.1 * torch.rand(52, 52, generator=torch.Generator().manual_seed(0))).abs()
    assert implementation((noisy + noisy.T) / 2, [13, 22, 43], metric, min_size=2) == [10, 25, 40]
    # A window too small to reach the edge moves as far as it may.
    assert implementation(A, [7, 28, 37], metric, window=2) == [9, 26, 39]


def test_refinement_respects_min_and_max_size() -> None:
    A = block_similarity([10, 15, 15, 12])
    # Event 0 may not shrink below 12 tokens, so boundary 0 stops at 12 instead of 10.
    assert refine_boundaries(A, [12, 27, 40], min_size=12) == [12, 25, 40]
    # Event 1 may not exceed 16 tokens: with boundary 1 at most at 27, boundary 0 stays >= 11.
    assert refine_boundaries(A, [12, 27, 40], max_size=16) == [11, 25, 40]
    assert refine_boundaries(A, [7, 28, 37], metric="none") == [7, 28, 37]
    assert refine_boundaries(A, []) == []


def _random_graph(length: int, seed: int, integer: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if integer:  # exact sums, so exact ties: tie-breaking must agree too
        half = torch.randint(0, 3, (length, length), generator=gen).float()
    else:
        half = torch.rand(length, length, generator=gen)
    return half + half.T


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    min_size=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    integer=st.booleans(),
    metric=st.sampled_from(["modularity", "conductance"]),
)
def test_vectorised_refinement_equals_loop(
    data: st.DataObject, min_size: int, seed: int, integer: bool, metric: Metric
) -> None:
    sizes = data.draw(st.lists(st.integers(min_size, min_size + 7), min_size=1, max_size=9))
    window = data.draw(st.one_of(st.none(), st.integers(0, 6)))
    max_size = data.draw(st.one_of(st.none(), st.integers(max(sizes), max(sizes) + 5)))
    boundaries = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
    A = _random_graph(sum(sizes), seed, integer)
    fast = refine_boundaries(A, boundaries, metric, min_size, window, max_size)
    slow = refine_boundaries_loop(A, boundaries, metric, min_size, window, max_size)
    assert fast == slow
    edges = [0, *fast, sum(sizes)]
    refined_sizes = [b - a for a, b in itertools.pairwise(edges)]
    assert len(fast) == len(boundaries)
    assert min(refined_sizes) >= min_size
    if max_size is not None:
        assert max(refined_sizes) <= max_size
    if window is not None:
        assert all(abs(a - b) <= window for a, b in zip(fast, boundaries, strict=True))


def test_refinement_on_key_similarity_of_clustered_keys() -> None:
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 2, 16, generator=gen)
    event_of_token = torch.tensor([0] * 20 + [1] * 12 + [2] * 18 + [3] * 14)
    keys = (centres[event_of_token] + 0.3 * torch.randn(64, 2, 16, generator=gen)).transpose(0, 1)
    A = key_similarity(keys)
    assert A.shape == (64, 64) and torch.equal(A, A.T) and bool((A >= 0).all())
    assert torch.allclose(A.diagonal(), torch.ones(64), atol=1e-5)
    for metric in ("modularity", "conductance"):
        assert refine_boundaries(A, [17, 35, 47], metric, min_size=4) == [20, 32, 50]
    dot = key_similarity(keys, heads=[1], kind="dot")
    expected = (keys[1] @ keys[1].T / 4.0).clamp_min(0)
    assert torch.allclose(dot, (expected + expected.T) / 2)
    with pytest.raises(ValueError, match="heads"):
        key_similarity(keys, heads=[2])


@pytest.mark.parametrize(
    ("A", "boundaries", "kwargs", "message"),
    [
        (torch.ones(4, 5), [2], {}, "square"),
        (-torch.ones(4, 4), [2], {}, "non-negative"),
        (torch.full((4, 4), float("nan")), [2], {}, "non-negative"),
        (torch.triu(torch.ones(6, 6)), [3], {}, "symmetric"),
        (torch.ones(6, 6), [4, 2], {}, "strictly increasing"),
        (torch.ones(6, 6), [6], {}, "strictly increasing"),
        (torch.ones(6, 6), [1], {"min_size": 2}, "fewer than min_size=2"),
        (torch.ones(6, 6), [3], {"max_size": 2}, "more than max_size=2"),
        (torch.ones(6, 6), [3], {"metric": "cut"}, "metric"),
        (torch.ones(6, 6), [2.5], {}, "ints"),
        (torch.ones(6, 6, dtype=torch.long), [3], {}, "floating-point"),
    ],
)
def test_refinement_rejects_bad_input(
    A: torch.Tensor, boundaries: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    for implementation in (refine_boundaries, refine_boundaries_loop):
        with pytest.raises(ValueError, match=message):
            implementation(A, boundaries, **kwargs)


# ----------------------------------------------------------------------------- events


def test_representatives_by_attention_mass_per_head() -> None:
    keys = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    mass = torch.tensor([[0.1, 0.9, 0.0, 0.5, 0.2, 0.5], [1.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    indices = representative_indices(keys, mass, n_repr=3)
    # Head 1: 5, 0, then the four-way tie at 0.0 goes to the earliest token, 1. Ascending.
    assert indices.tolist() == [[1, 3, 5], [0, 1, 5]]
    assert representative_indices(keys, mass, n_repr=2).tolist() == [[1, 3], [0, 5]]
    reps = select_representatives(keys, mass, n_repr=3)
    assert reps.shape == (2, 3, 3) and torch.equal(reps[0, 0], keys[0, 1])
    shared = representative_indices(keys, torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 1.0]), 2)
    assert shared.tolist() == [[2, 5], [2, 5]]
    assert representative_indices(keys, mass, n_repr=10).shape == (2, 6)


def test_representatives_fallback_is_closest_to_the_mean() -> None:
    keys = torch.tensor([[[10.0, 0.0], [0.1, 0.0], [-10.0, 0.0], [0.0, 0.2], [5.0, 5.0]]])
    # Mean (1.02, 1.04): the keys nearest to it are 1 and 3.
    assert representative_indices(keys, None, n_repr=2).tolist() == [[1, 3]]
    with pytest.raises(ValueError, match="attention_mass"):
        representative_indices(keys, torch.ones(2, 5), 2)


def test_event_validation_size_and_device() -> None:
    event = Event(3, 10, 14, {"layer.0.k": torch.zeros(2, 4, 8)}, {"layer.0": torch.zeros(2, 1, 8)})
    assert event.num_tokens == 4 and event.nbytes == (64 + 16) * 4
    assert event.to("cpu") is event
    with pytest.raises(ValueError, match="empty"):
        Event(0, 5, 5)
    with pytest.raises(ValueError, match="event_id"):
        Event(-1, 0, 5)
    with pytest.raises(ValueError, match="Tensor"):
        Event(0, 0, 5, {"k": [1, 2]})  # type: ignore[dict-item]


# ----------------------------------------------------------------------------- retrieval


def _events_repr(count: int, heads: int = 2, dim: int = 8) -> dict[int, torch.Tensor]:
    """Event e's representatives: e one-hot-ish directions, 1 or 2 per event."""
    eye = torch.eye(dim)
    return {
        e: torch.stack([eye[e % dim], -eye[e % dim]])[: 1 + e % 2].expand(heads, -1, -1)
        for e in range(count)
    }


def test_retrieval_similar_events_then_contiguous_neighbours() -> None:
    reps = _events_repr(8)
    sizes = dict.fromkeys(reps, 10)
    query = torch.eye(8)[5].expand(4, 3, 8)  # 4 query heads on 2 KV heads, 3 tokens
    scores = event_scores(query, *pack_representatives(reps)[1:])
    assert int(scores.argmax()) == 5
    queue: deque[int] = deque(maxlen=4)
    assert retrieve_events(query, reps, sizes, 1, 0, 100, queue) == [5]
    assert list(queue) == [5]
    assert retrieve_events(query, reps, sizes, 1, 2, 100, deque(maxlen=4)) == [4, 5, 6]
    # Only one neighbour requested: the following event comes first.
    assert retrieve_events(query, reps, sizes, 1, 1, 100, deque(maxlen=4)) == [5, 6]
    # A queue carried over from an earlier chunk (event 1) offers its neighbours too.
    carried: deque[int] = deque([1], maxlen=4)
    assert retrieve_events(query, reps, sizes, 1, 4, 100, carried) == [0, 2, 4, 5, 6]
    assert list(carried) == [1, 5]
    with pytest.raises(ValueError, match="bounded"):
        retrieve_events(query, reps, sizes, 1, 1, 100, deque())


def test_retrieval_budget_and_deterministic_ties() -> None:
    reps = _events_repr(8)
    sizes = {e: 10 + e for e in reps}
    query = torch.zeros(2, 1, 8)  # every event scores 0: ties go to the smaller id
    assert retrieve_events(query, reps, sizes, 3, 0, 1000) == [0, 1, 2]
    # Budget 25: 0 (10) + 1 (11) = 21, 2 (12) does not fit and is skipped, nothing else fits.
    assert retrieve_events(query, reps, sizes, 3, 3, 25) == [0, 1]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        q = torch.randn(2, 4, 8, generator=gen)
        budget = int(torch.randint(0, 60, (1,), generator=gen))
        chosen = retrieve_events(q, reps, sizes, 3, 2, budget, deque(maxlen=3))
        assert sum(sizes[e] for e in chosen) <= budget
        assert chosen == sorted(set(chosen))
        assert chosen == retrieve_events(q, reps, sizes, 3, 2, budget, deque(maxlen=3))
    assert retrieve_events(query, {}, {}, 3, 3, 100) == []


# ----------------------------------------------------------------------------- event store


class DictBacking:
    """A stand-in shared store: a plain dict of (tensor copies, meta)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any], float | None]] = {}

    def put_tensors(
        self,
        key: str,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> None:
        copied = {k: v.clone() for k, v in tensors.items()}
        self.records[key] = (copied, json.loads(json.dumps(meta or {})), ttl_s)

    def get_tensors(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        found = self.records.get(key)
        return None if found is None else ({k: v.clone() for k, v in found[0].items()}, found[1])


def _event(event_id: int, tokens: int = 4) -> Event:
    gen = torch.Generator().manual_seed(event_id)
    return Event(
        event_id,
        event_id * 10,
        event_id * 10 + tokens,
        {
            "layer.0.k": torch.randn(2, tokens, 8, generator=gen),
            "layer.0.v": torch.randn(2, tokens, 8),
        },
        {"layer.0": torch.randn(2, 2, 8, generator=gen)},
    )


def _same(a: Event | None, b: Event) -> bool:
    assert a is not None
    return (
        (a.event_id, a.start, a.end) == (b.event_id, b.start, b.end)
        and all(torch.equal(a.tensors[k], b.tensors[k]) for k in b.tensors)
        and all(torch.equal(a.representatives[k], b.representatives[k]) for k in b.representatives)
    )


def test_event_store_lru_of_hot_events() -> None:
    store = EventStore(cache_events=2)
    for e in range(4):
        store.add(_event(e))
    store.get(0), store.get(1), store.get(0), store.get(2)  # 1 is least recently used
    assert (store.cache_hits, store.cache_misses) == (1, 3)
    assert list(store._hot) == [0, 2]
    assert store.get(0) is not None and store.cache_hits == 2
    assert store.get(99) is None
    assert set(store.representatives("layer.0")) == {0, 1, 2, 3}
    assert store.sizes() == dict.fromkeys(range(4), 4)


def test_event_store_bounds_and_copies() -> None:
    original = _event(0)
    store = EventStore(max_events=3)
    store.add(original)
    original.tensors["layer.0.k"].zero_()  # the store kept its own copy
    kept = store.get(0)
    assert kept is not None and bool(kept.tensors["layer.0.k"].abs().sum() > 0)
    for e in range(1, 5):
        store.add(_event(e))
    assert store.ids() == [2, 3, 4] and store.get(0) is None
    by_bytes = EventStore(max_bytes=2 * _event(0).nbytes)
    for e in range(3):
        by_bytes.add(_event(e))
    assert by_bytes.ids() == [1, 2] and by_bytes.nbytes == 2 * _event(0).nbytes
    with pytest.raises(ValueError, match="already stored"):
        by_bytes.add(_event(2))
    with pytest.raises(ValueError, match="max_bytes"):
        EventStore(max_bytes=10).add(_event(0))


def test_event_store_state_round_trip_is_plain() -> None:
    store = EventStore()
    events = [_event(e, tokens=3 + e) for e in range(3)]
    for event in events:
        store.add(event)
    state = store.state_dict()
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    assert json.loads(json.dumps(plain)) == plain  # tensors + JSON only
    restored = EventStore()
    restored.load_state_dict(state)
    assert restored.ids() == [0, 1, 2]
    assert all(_same(restored.get(e.event_id), e) for e in events)
    broken = dict(state)
    del broken["event.1.t.layer.0.v"]
    with pytest.raises(ValueError, match=r"event\.1\.t\.layer\.0\.v"):
        restored.load_state_dict(broken)
    assert restored.ids() == [0, 1, 2]  # unchanged on error
    with pytest.raises(ValueError, match="unexpected"):
        restored.load_state_dict({**state, "stray": torch.zeros(1)})
    with pytest.raises(ValueError, match="format"):
        restored.load_state_dict({"events": []})


def test_event_store_backing_shares_and_survives_restarts() -> None:
    backing = DictBacking()
    assert isinstance(backing, TensorBacking)
    store = EventStore(max_events=2, cache_events=0, backing=backing, namespace="s1", ttl_s=60.0)
    events = [_event(e) for e in range(3)]
    for event in events:
        store.add(event)
    assert sorted(backing.records) == ["s1/event/0", "s1/event/1", "s1/event/2"]
    assert backing.records["s1/event/0"][2] == 60.0
    assert store.ids() == [1, 2]
    assert _same(store.get(0), events[0])  # evicted from memory, read back from the backing
    restarted = EventStore(backing=backing, namespace="s1")
    assert len(restarted) == 0 and _same(restarted.get(2), events[2])
    assert EventStore(backing=backing, namespace="other").get(2) is None
    with pytest.raises(ValueError, match="backing"):
        EventStore(backing=object())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- layering


def test_episodic_imports_no_upper_layer() -> None:
    code = (
        "import sys, memory.episodic; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kv_store', 'policies', "
        "'services', 'envs'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
