"""EventStore backed by the real stores: events written through survive a restart and come
back bit-identical, also after the CPU tier evicted them."""

from __future__ import annotations

import torch

from kv_store import load_state, save_state
from kv_store.base import BaseStore
from memory.episodic import Event, EventStore


def _event(event_id: int, length: int = 5) -> Event:
    gen = torch.Generator().manual_seed(event_id)
    keys = torch.randn(3, length, 8, generator=gen)
    return Event(
        event_id=event_id,
        start=event_id * length,
        end=(event_id + 1) * length,
        tensors={"layer.2.k": keys, "layer.2.v": torch.randn(3, length, 8, generator=gen)},
        representatives={"layer.2": keys[:, :2]},
    )


def _same(a: Event | None, b: Event) -> bool:
    return (
        a is not None
        and (a.event_id, a.start, a.end) == (b.event_id, b.start, b.end)
        and a.tensors.keys() == b.tensors.keys()
        and all(torch.equal(a.tensors[k], b.tensors[k]) for k in b.tensors)
        and all(torch.equal(a.representatives[k], b.representatives[k]) for k in b.representatives)
    )


def test_events_survive_a_restart_through_the_store(store: BaseStore) -> None:
    events = [_event(i) for i in range(6)]
    first = EventStore(max_events=3, cache_events=2, backing=store, namespace="robot-1")
    for event in events:
        first.add(event)
    assert len(first) == 3  # the CPU tier is bounded ...
    assert _same(first.get(0), events[0])  # ... evicted events come back from the store

    restarted = EventStore(backing=store, namespace="robot-1")  # a new process
    for event in events:
        assert _same(restarted.get(event.event_id), event)
    assert restarted.get(99) is None


def test_event_store_state_round_trip_through_the_store(store: BaseStore) -> None:
    source = EventStore(max_events=10)
    for i in range(4):
        source.add(_event(i, length=3 + i))
    save_state(store, "robot-1/events", source.state_dict())
    state = load_state(store, "robot-1/events")
    assert state is not None
    restored = EventStore(max_events=10)
    restored.load_state_dict(state)
    assert restored.ids() == source.ids() and restored.sizes() == source.sizes()
    for i in range(4):
        assert _same(restored.get(i), _event(i, length=3 + i))


def test_packed_representatives_follow_adds_evictions_and_clear() -> None:
    from memory.episodic import pack_representatives

    store = EventStore(max_events=3)
    assert store.packed_representatives("layer.2") is None
    for i in range(5):  # the 4th and 5th adds evict the oldest events
        store.add(_event(i, length=3 + i))
        ids, packed, valid = store.packed_representatives("layer.2")
        want_ids, want_packed, want_valid = pack_representatives(store.representatives("layer.2"))
        assert ids == want_ids == store.ids()
        assert torch.equal(packed, want_packed) and torch.equal(valid, want_valid)
    assert store.packed_representatives("layer.2") is store.packed_representatives("layer.2")
    store.clear()
    assert store.packed_representatives("layer.2") is None
