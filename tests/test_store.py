"""One behaviour suite, run against both backends (`store` fixture: LocalStore, RedisStore)."""

from __future__ import annotations

import time

import pytest
import torch

from kv_store import (
    CorruptRecord,
    LocalStore,
    RecordTooLarge,
    RedisStore,
    StoreUnavailable,
    load_state,
    save_state,
)
from kv_store.base import BaseStore
from kv_store.redis_server import LocalRedisServer

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


def _sample(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=gen).to(dtype)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_each_dtype_bit_exact(store: BaseStore, dtype: torch.dtype) -> None:
    tensor = _sample(dtype)
    store.put_tensors("k", {"x": tensor})
    found = store.get_tensors("k")
    assert found is not None
    assert _bit_equal(found[0]["x"], tensor)


def test_round_trip_non_contiguous_nan_and_empty(store: BaseStore) -> None:
    base = torch.randn(4, 6, 8)
    tensors = {
        "transposed": base.transpose(0, 2),
        "strided": base[:, ::2, 1::3],
        "nan_inf": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
    }
    store.put_tensors("k", tensors)
    found = store.get_tensors("k")
    assert found is not None
    assert list(found[0]) == list(tensors)
    for name, tensor in tensors.items():
        assert _bit_equal(found[0][name], tensor), name


def test_returned_tensors_are_independent_copies(store: BaseStore) -> None:
    original = torch.zeros(4)
    store.put_tensors("k", {"x": original})
    original += 1  # mutating after put must not change what is stored
    first = store.get_tensors("k")
    assert first is not None
    first[0]["x"] += 5  # nor may mutating what get returned
    second = store.get_tensors("k")
    assert second is not None
    assert torch.equal(second[0]["x"], torch.zeros(4))


def test_meta_round_trip_and_validation(store: BaseStore) -> None:
    meta = {"step": 3, "t": 1.25, "name": "robot-1", "layers": [2, 5], "nested": {"ok": None}}
    store.put_tensors("k", {"x": torch.ones(1)}, meta=meta)
    found = store.get_tensors("k")
    assert found is not None and found[1] == meta
    with pytest.raises(ValueError, match="meta"):
        store.put_tensors("k2", {"x": torch.ones(1)}, meta={"bad": object()})
    with pytest.raises(ValueError, match="meta"):
        store.put_tensors("k2", {"x": torch.ones(1)}, meta={"bad": float("nan")})
    assert store.get_tensors("k2") is None  # nothing half-written


def test_bad_input_is_a_clear_error_and_writes_nothing(store: BaseStore) -> None:
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        store.put_tensors("k", {"x": [1, 2, 3]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="dtype"):
        store.put_tensors("k", {"x": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="key"):
        store.put_tensors("", {"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="ttl_s"):
        store.put_tensors("k", {"x": torch.zeros(2)}, ttl_s=-1)
    assert store.get_tensors("k") is None


def test_missing_delete_exists_and_overwrite(store: BaseStore) -> None:
    assert store.get_tensors("nope") is None
    assert not store.delete("nope")
    store.put_tensors("k", {"a": torch.ones(2), "b": torch.ones(3)})
    store.put_tensors("k", {"c": torch.zeros(1)})  # overwrite replaces the whole record
    found = store.get_tensors("k")
    assert found is not None and list(found[0]) == ["c"]
    assert store.exists("k")
    assert store.delete("k")
    assert not store.exists("k") and store.get_tensors("k") is None


def test_put_many_get_many(store: BaseStore) -> None:
    items = {f"k{i}": ({"x": torch.full((2,), float(i))}, {"i": i}) for i in range(5)}
    store.put_many(items)
    found = store.get_many(["k0", "missing", "k4"])
    assert found[1] is None
    assert found[0] is not None and found[0][1] == {"i": 0}
    assert found[2] is not None and torch.equal(found[2][0]["x"], torch.full((2,), 4.0))
    # one bad item => nothing written
    with pytest.raises(ValueError):
        store.put_many({"ok": ({"x": torch.ones(1)}, None), "bad": ({"x": "no"}, None)})  # type: ignore[dict-item]
    assert store.get_tensors("ok") is None


def test_long_and_unusual_keys(store: BaseStore) -> None:
    long_key = "session/" + "x" * 500
    odd_key = "robot 7 * [arm] ?"
    store.put_tensors(long_key, {"x": torch.ones(1)})
    store.put_tensors(odd_key, {"x": torch.zeros(1)})
    assert store.get_tensors(long_key) is not None
    assert sorted(store.keys()) == sorted([long_key, odd_key])
    assert store.keys(prefix="session/") == [long_key]


def test_ttl_expiry(store: BaseStore) -> None:
    store.put_tensors("short", {"x": torch.ones(1)}, ttl_s=0.15)
    store.put_tensors("long", {"x": torch.ones(1)}, ttl_s=60)
    store.put_tensors("forever", {"x": torch.ones(1)})
    assert store.get_tensors("short") is not None
    time.sleep(0.3)
    assert store.get_tensors("short") is None
    assert store.get_tensors("long") is not None
    assert store.get_tensors("forever") is not None
    assert "short" not in store.keys()


def test_namespace_isolation(store: BaseStore) -> None:
    other = store.with_namespace(store.namespace + "-other")
    store.put_tensors("shared-name", {"x": torch.ones(1)})
    other.put_tensors("shared-name", {"x": torch.zeros(1)})
    other.put_tensors("only-other", {"x": torch.zeros(1)})
    store.append_event("log", {"t": 1.0, "who": "mine"})
    mine = store.get_tensors("shared-name")
    assert mine is not None and torch.equal(mine[0]["x"], torch.ones(1))
    assert store.get_tensors("only-other") is None  # cannot read
    assert store.keys() == ["shared-name"]  # cannot list
    assert not store.delete("only-other")  # cannot delete
    assert other.get_tensors("only-other") is not None
    assert other.read_events("log") == []
    for key in other.keys():
        other.delete(key)
    with pytest.raises(ValueError, match="namespace"):
        store.with_namespace("tm:*")


def test_stream_append_and_time_range_read(store: BaseStore) -> None:
    times = [10.0, 10.0005, 11.0, 12.5, 20.0]
    ids = [store.append_event("ep", {"t": t, "i": i}) for i, t in enumerate(times)]
    assert len(set(ids)) == len(ids)
    everything = store.read_events("ep")
    assert [e["i"] for e in everything] == [0, 1, 2, 3, 4]
    assert [e["_id"] for e in everything] == ids
    assert [e["i"] for e in store.read_events("ep", start=10.0003, end=12.5)] == [1, 2, 3]
    assert [e["i"] for e in store.read_events("ep", start=11.0, limit=2)] == [2, 3]
    assert store.read_events("ep", start=13, end=12) == []
    assert store.read_events("absent") == []
    # times going backwards are refused and the log is unchanged
    with pytest.raises(ValueError, match="backwards"):
        store.append_event("ep", {"t": 5.0})
    assert len(store.read_events("ep")) == 5
    with pytest.raises(ValueError, match="_id"):
        store.append_event("ep", {"t": 30.0, "_id": "x"})
    assert store.delete_stream("ep") and store.read_events("ep") == []


def test_stream_default_time_and_bounds() -> None:
    ticks = iter([100.0, 101.0])
    store = LocalStore(
        event_clock=lambda: next(ticks), max_events_per_stream=3, max_event_bytes=200
    )
    store.append_event("s", {"a": 1})
    store.append_event("s", {"a": 2})
    assert [e["t"] for e in store.read_events("s")] == [100.0, 101.0]
    for i in range(5):
        store.append_event("s", {"t": 200.0 + i})
    assert [e["t"] for e in store.read_events("s")] == [202.0, 203.0, 204.0]
    with pytest.raises(RecordTooLarge):
        store.append_event("s", {"t": 300.0, "blob": "x" * 500})


def test_oversized_record_refused_before_sending(store: BaseStore) -> None:
    small = store.with_namespace(store.namespace)
    small.max_record_bytes = 1024
    with pytest.raises(RecordTooLarge, match="exceeds"):
        small.put_tensors("big", {"x": torch.zeros(1024)})  # 4 KiB > 1 KiB
    assert store.get_tensors("big") is None


def test_state_helpers_round_trip(store: BaseStore) -> None:
    state = {"k": torch.randn(2, 3), "count": 4, "config": {"layers": [1, 2]}, "t": [0.5, 1.5]}
    save_state(store, "session:1", state)
    loaded = load_state(store, "session:1")
    assert loaded is not None
    assert torch.equal(loaded["k"], state["k"])
    assert {k: v for k, v in loaded.items() if k != "k"} == {
        k: v for k, v in state.items() if k != "k"
    }
    assert load_state(store, "session:2") is None


# -- backend-specific ---------------------------------------------------------------------------


def test_local_store_lru_capacity() -> None:
    store = LocalStore(max_bytes=3 * 400)
    for i in range(3):
        store.put_tensors(f"k{i}", {"x": torch.zeros(100)})  # 400 bytes each
    assert store.get_tensors("k0") is not None  # k0 is now most recently used
    store.put_tensors("k3", {"x": torch.zeros(100)})
    assert store.get_tensors("k1") is None  # least recently used went first
    assert all(store.get_tensors(k) is not None for k in ("k0", "k2", "k3"))
    assert store.nbytes == 1200
    with pytest.raises(RecordTooLarge):
        store.put_tensors("huge", {"x": torch.zeros(1000)})
    assert store.get_tensors("k3") is not None  # a refused put evicts nothing


def test_local_store_ttl_with_injected_clock() -> None:
    now = [0.0]
    store = LocalStore(ttl_clock=lambda: now[0])
    store.put_tensors("k", {"x": torch.ones(1)}, ttl_s=10)
    now[0] = 9.99
    assert store.exists("k")
    now[0] = 10.0
    assert not store.exists("k") and store.nbytes == 0


def test_redis_key_layout(redis_store: RedisStore) -> None:
    redis_store.put_tensors("robot-1/frame", {"x": torch.ones(1)}, ttl_s=30)
    name = redis_store.object_key("robot-1/frame")
    assert name == f"tm:{redis_store.namespace}:obj:robot-1/frame"
    assert redis_store.client.type(name) == b"string"  # header + tensors in ONE value
    assert 0 < redis_store.client.pttl(name) <= 30_000
    long_name = redis_store.object_key("y" * 300)
    assert long_name.startswith(f"tm:{redis_store.namespace}:obj:#") and len(long_name) < 100


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-7],  # truncated payload
        lambda b: b[:10],  # truncated header
        lambda b: b[:-1] + bytes([b[-1] ^ 0x01]),  # one flipped bit in the payload
        lambda b: b[:20] + bytes([b[20] ^ 0x40]) + b[21:],  # flipped bit in the header
        lambda b: b"\x80\x04\x95" + b[3:],  # a pickle's opening bytes: foreign
        lambda b: b"",
    ],
    ids=["truncated", "truncated-header", "payload-bit", "header-bit", "foreign", "empty"],
)
def test_redis_corrupt_record_raises_and_is_kept(redis_store: RedisStore, mangle) -> None:
    redis_store.put_tensors("k", {"x": torch.arange(64, dtype=torch.float32)}, meta={"a": 1})
    name = redis_store.object_key("k")
    good = redis_store.client.get(name)
    redis_store.client.set(name, mangle(good))
    with pytest.raises(CorruptRecord):
        redis_store.get_tensors("k")
    assert redis_store.client.exists(name)  # evidence is not destroyed by a read


def test_redis_record_copied_under_another_key_is_detected(redis_store: RedisStore) -> None:
    redis_store.put_tensors("a", {"x": torch.ones(2)})
    redis_store.client.set(
        redis_store.object_key("b"), redis_store.client.get(redis_store.object_key("a"))
    )
    with pytest.raises(CorruptRecord, match="expected 'b'"):
        redis_store.get_tensors("b")


def test_redis_wrong_type_key_is_corrupt_not_crash(redis_store: RedisStore) -> None:
    redis_store.client.hset(redis_store.object_key("h"), mapping={"a": "b"})
    with pytest.raises(CorruptRecord):
        redis_store.get_tensors("h")
    redis_store.client.set(redis_store.stream_key("s"), b"not a stream")
    with pytest.raises(CorruptRecord):
        redis_store.read_events("s")


def test_redis_killed_then_restarted(private_redis: LocalRedisServer) -> None:
    store = RedisStore(private_redis.url, namespace="outage", socket_timeout_s=1.0)
    store.put_tensors("k", {"x": torch.ones(3)})
    private_redis.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        store.get_tensors("k")
    with pytest.raises(StoreUnavailable):
        store.put_tensors("k", {"x": torch.ones(3)})
    with pytest.raises(StoreUnavailable):
        store.append_event("log", {"t": 1.0})
    assert time.monotonic() - started < 10  # fails fast, never hangs a control loop
    private_redis.start()
    # the same object works again (the data is gone: persistence is off in tests)
    assert store.get_tensors("k") is None
    store.put_tensors("k", {"x": torch.full((3,), 2.0)})
    found = store.get_tensors("k")
    assert found is not None and torch.equal(found[0]["x"], torch.full((3,), 2.0))
    assert store.ping()


def test_redis_unreachable_at_construction_is_not_an_error_until_used() -> None:
    from kv_store.redis_server import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        store.ping()
