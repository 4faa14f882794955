"""KVLangGraphStore: langgraph's BaseStore over kv_store, on LocalStore and a real redis-server.

langgraph ships no store conformance suite in its wheels (checked: langgraph 1.2.22,
langgraph-checkpoint 4.3.2 have no tests/conformance module), so these mirror the cases of its
own store tests: put/get/delete, search with filters and pagination, list_namespaces with
prefix/suffix/wildcards/max_depth, TTL and refresh-on-read, batch/abatch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)

from kv_store import LocalStore, RedisStore
from kv_store.base import BaseStore
from memory.clock import SimClock
from services.hooks.langgraph_store import KVLangGraphStore, decode_label, encode_label


class TTLClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lg(store: BaseStore) -> KVLangGraphStore:
    return KVLangGraphStore(store, clock=SimClock(1_700_000_000.0))


def test_put_get_update_delete(lg: KVLangGraphStore) -> None:
    assert lg.get(("users", "u1"), "prefs") is None
    lg.put(("users", "u1"), "prefs", {"theme": "dark", "n": 1})
    item = lg.get(("users", "u1"), "prefs")
    assert item is not None
    assert item.value == {"theme": "dark", "n": 1}
    assert item.namespace == ("users", "u1") and item.key == "prefs"
    created = item.created_at
    assert lg.clock.advance(5)  # type: ignore[attr-defined]
    lg.put(("users", "u1"), "prefs", {"theme": "light"})
    again = lg.get(("users", "u1"), "prefs")
    assert again is not None and again.value == {"theme": "light"}
    assert again.created_at == created and again.updated_at > created
    lg.delete(("users", "u1"), "prefs")
    assert lg.get(("users", "u1"), "prefs") is None
    lg.delete(("users", "u1"), "never-there")  # deleting nothing is fine


def test_awkward_labels_and_keys_round_trip(lg: KVLangGraphStore) -> None:
    namespaces = [("a:b", "c/d"), ("a", "b:c/d"), ("é ü", "100%"), ("x=y",), ("k" * 300,)]
    for i, ns in enumerate(namespaces):
        lg.put(ns, f"key:/%={i}", {"i": i})
    for i, ns in enumerate(namespaces):
        item = lg.get(ns, f"key:/%={i}")
        assert item is not None and item.value == {"i": i} and item.namespace == ns
    assert sorted(lg.list_namespaces()) == sorted(namespaces)
    for text in ("a=b", "%3D", "x/y:z", ""):
        assert decode_label(encode_label(text)) == text


def test_invalid_namespaces(lg: KVLangGraphStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        lg.put((), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        lg.put(("a.b",), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        lg.batch([PutOp(("ok", ""), "k", {"a": 1})])
    with pytest.raises(InvalidNamespaceError):
        lg.put(("langgraph",), "k", {"a": 1})


def test_search_filter_and_pagination(lg: KVLangGraphStore) -> None:
    docs = {
        "d1": {"kind": "report", "status": "active", "score": 4, "meta": {"lang": "en"}},
        "d2": {"kind": "report", "status": "draft", "score": 7, "meta": {"lang": "fr"}},
        "d3": {"kind": "note", "status": "active", "score": 9, "meta": {"lang": "en"}},
    }
    for key, value in docs.items():
        lg.put(("docs", "team"), key, value)
        lg.clock.advance(1)  # type: ignore[attr-defined]
    lg.put(("other",), "x", {"kind": "report"})
    lg.put(("docsx",), "y", {"kind": "report"})  # shares a string prefix, not a namespace one

    def keys(**kwargs: object) -> list[str]:
        return [i.key for i in lg.search(("docs",), **kwargs)]  # type: ignore[arg-type]

    assert keys() == ["d3", "d2", "d1"]  # most recently updated first
    assert set(keys(filter={"kind": "report"})) == {"d1", "d2"}
    assert keys(filter={"kind": "report", "status": "active"}) == ["d1"]
    assert set(keys(filter={"score": {"$gt": 5}})) == {"d2", "d3"}
    assert keys(filter={"score": {"$gte": 4, "$lt": 7}}) == ["d1"]
    assert set(keys(filter={"status": {"$ne": "draft"}})) == {"d1", "d3"}
    assert set(keys(filter={"meta": {"lang": "en"}})) == {"d1", "d3"}
    assert keys(limit=1) == ["d3"] and keys(limit=1, offset=1) == ["d2"]
    assert keys(offset=5) == []
    assert [i.key for i in lg.search((), filter={"kind": "report"})].count("x") == 1
    assert lg.search(("nothing",)) == []


def test_search_query_ranks_lexically(lg: KVLangGraphStore) -> None:
    lg.put(("mem",), "a", {"text": "The user prefers dark mode in the editor"})
    lg.put(("mem",), "b", {"text": "Paris weather was sunny yesterday"})
    hits = lg.search(("mem",), query="weather in Paris")
    assert hits[0].key == "b" and hits[0].score is not None and hits[0].score > 0
    assert hits[0].score > (hits[1].score or 0)


def test_list_namespaces(lg: KVLangGraphStore) -> None:
    for ns in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
        ("b", "a", "f"),
        ("users", "123"),
        ("users", "456", "settings"),
    ]:
        lg.put(ns, "k", {"v": 1})
    assert lg.list_namespaces(prefix=("a", "b")) == [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
    ]
    assert lg.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert lg.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert lg.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert lg.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert lg.list_namespaces(max_depth=1) == [("a",), ("b",), ("users",)]
    everything = lg.list_namespaces()
    assert len(everything) == 8 and everything == sorted(everything)
    assert lg.list_namespaces(limit=2, offset=1) == everything[1:3]
    assert lg.list_namespaces(prefix=("nope",)) == []


def test_batch_and_abatch_in_order(lg: KVLangGraphStore) -> None:
    results = lg.batch(
        [
            PutOp(("t",), "k1", {"v": 1}),
            GetOp(("t",), "k1"),
            PutOp(("t",), "k1", None),
            GetOp(("t",), "k1"),
            ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("t",)),)),
        ]
    )
    first = results[1]
    assert results[0] is None and isinstance(first, Item) and first.value == {"v": 1}
    assert results[3] is None and results[4] == []

    async def run() -> list[Any]:
        await lg.aput(("t",), "k2", {"v": 2})
        return await lg.abatch([GetOp(("t",), "k2"), SearchOp(("t",), None, 10, 0)])

    got, found = asyncio.run(run())
    assert isinstance(got, Item) and got.value == {"v": 2} and [i.key for i in found] == ["k2"]
    assert asyncio.run(lg.aget(("t",), "k2")) == got


def test_ttl_local_with_refresh() -> None:
    ttl_clock = TTLClock()
    lg = KVLangGraphStore(LocalStore(ttl_clock=ttl_clock), ttl={"default_ttl": 1.0})
    lg.put(("s",), "default", {"v": 1})  # 1 minute by default
    lg.put(("s",), "short", {"v": 2}, ttl=0.5)
    lg.put(("s",), "forever", {"v": 3}, ttl=None)
    ttl_clock.t = 40.0
    assert lg.get(("s",), "default") is not None  # refreshes: expires at 100 s now
    ttl_clock.t = 45.0
    assert lg.get(("s",), "short", refresh_ttl=False) is None
    ttl_clock.t = 90.0
    assert lg.get(("s",), "default", refresh_ttl=False) is not None
    ttl_clock.t = 101.0
    assert lg.get(("s",), "default") is None
    assert lg.get(("s",), "forever") is not None
    assert [i.key for i in lg.search(("s",))] == ["forever"]
    with pytest.raises(ValueError, match="ttl"):
        lg.put(("s",), "bad", {"v": 1}, ttl=-1)


def test_ttl_redis(redis_store: RedisStore) -> None:
    lg = KVLangGraphStore(redis_store)
    lg.put(("s",), "short", {"v": 1}, ttl=0.01)  # 0.6 s
    lg.put(("s",), "kept", {"v": 2})
    assert lg.get(("s",), "short", refresh_ttl=False) is not None
    time.sleep(0.8)
    assert lg.get(("s",), "short") is None
    assert lg.get(("s",), "kept") is not None
    assert lg.list_namespaces() == [("s",)]


def test_namespaces_of_kv_stores_are_separate(redis_store: RedisStore) -> None:
    a = KVLangGraphStore(redis_store)
    b = KVLangGraphStore(redis_store, prefix="other")
    a.put(("x",), "k", {"v": 1})
    assert b.get(("x",), "k") is None and b.list_namespaces() == []
    with pytest.raises(ValueError, match="prefix"):
        KVLangGraphStore(redis_store, prefix="bad:prefix")


class InterleavedStore:
    """A real store whose next read lets another client act right after it (once): the
    interleaving "read, another put/delete, then the reader's TTL refresh", made deterministic.
    Everything else goes straight to the store."""

    def __init__(self, store: BaseStore) -> None:
        self.store = store
        self.after_next_read: Any = None

    def _read_done(self) -> None:
        act, self.after_next_read = self.after_next_read, None
        if act is not None:
            act()

    def get_tensors(self, key: str) -> Any:
        found = self.store.get_tensors(key)
        self._read_done()
        return found

    def get_many(self, keys: list[str]) -> Any:
        found = self.store.get_many(keys)
        self._read_done()
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.mark.parametrize("read", ["get", "search"])
@pytest.mark.parametrize("race", ["put", "delete"])
def test_refreshing_read_never_reverts_a_concurrent_write(
    store: BaseStore, read: str, race: str
) -> None:
    ttl: Any = {"default_ttl": 10.0, "refresh_on_read": True}
    writer = KVLangGraphStore(store, ttl=ttl, clock=SimClock(1_700_000_000.0))
    interleaved = InterleavedStore(store)
    reader = KVLangGraphStore(interleaved, ttl=ttl)  # type: ignore[arg-type]
    writer.put(("mem",), "k", {"v": 1})
    assert len(writer.search(("mem",), refresh_ttl=False)) == 1
    if race == "put":
        interleaved.after_next_read = lambda: writer.put(("mem",), "k", {"v": 2})
    else:
        interleaved.after_next_read = lambda: writer.delete(("mem",), "k")
    seen = reader.get(("mem",), "k") if read == "get" else reader.search(("mem",))
    assert seen  # the reader saw version 1, then refreshed its TTL
    after = writer.get(("mem",), "k", refresh_ttl=False)
    if race == "put":
        assert after is not None and after.value == {"v": 2}  # the put is not reverted
    else:
        assert after is None  # the delete is not undone
        assert writer.search(("mem",)) == []


def test_list_prefixes_and_namespaces(lg: KVLangGraphStore) -> None:
    lg.put(["test", "a"], "k1", {"v": 1})  # type: ignore[arg-type]
    lg.put(("test", "b"), "k2", {"v": 2})
    lg.put(("other",), "k3", {"v": 3})
    assert {i.key for i in lg.search(["test"])} == {"k1", "k2"}  # type: ignore[arg-type]
    assert [i.key for i in lg.search(["test", "a"])] == ["k1"]  # type: ignore[arg-type]
    assert lg.search(["test"]) == lg.search(("test",))  # type: ignore[arg-type]
    item = lg.get(["test", "a"], "k1")  # type: ignore[arg-type]
    assert item is not None and item.namespace == ("test", "a")


def test_dotted_filter_keys_are_nested_paths(lg: KVLangGraphStore) -> None:
    lg.put(("u",), "admin", {"user": {"access-level": "admin", "age": 40}, "name": "a"})
    lg.put(("u",), "guest", {"user": {"access-level": "guest", "age": 20}, "name": "g"})
    lg.put(("u",), "flat", {"user.access-level": "admin", "user": "not a dict"})

    def keys(filter: dict[str, Any]) -> set[str]:
        return {i.key for i in lg.search(("u",), filter=filter)}

    assert keys({"user.access-level": "guest"}) == {"guest"}
    assert keys({"user.age": {"$gte": 30}}) == {"admin"}
    # a key that exists as written wins over the path
    assert keys({"user.access-level": "admin"}) == {"admin", "flat"}
    assert keys({"user.missing.deeper": None}) == {"admin", "guest", "flat"}


class CountingStore(InterleavedStore):
    """A real store that counts the records read through it."""

    def __init__(self, store: BaseStore) -> None:
        super().__init__(store)
        self.records_read = 0

    def get_many(self, keys: list[str]) -> Any:
        self.records_read += len(keys)
        return super().get_many(keys)


def test_search_reads_from_the_index_not_every_item(store: BaseStore) -> None:
    counting = CountingStore(store)
    lg = KVLangGraphStore(counting, clock=SimClock(1_700_000_000.0))  # type: ignore[arg-type]
    for i in range(300):
        lg.put(("bulk", f"u{i % 3}"), f"k{i}", {"i": i, "even": i % 2 == 0})
        lg.clock.advance(1)  # type: ignore[attr-defined]
    lg.put(("elsewhere",), "x", {"i": -1})
    lg.search(("nothing",))  # the one-time index check
    counting.records_read = 0
    newest = lg.search(("bulk",), limit=5)
    assert [i.value["i"] for i in newest] == [299, 298, 297, 296, 295]
    assert counting.records_read <= 64  # one page, not the 301 items
    counting.records_read = 0
    evens = lg.search(("bulk", "u1"), filter={"even": True}, limit=3, offset=1)
    reference = [i for i in reversed(range(300)) if i % 3 == 1 and i % 2 == 0][1:4]
    assert [i.value["i"] for i in evens] == reference
    assert counting.records_read <= 64


def test_expired_items_leave_the_index() -> None:
    ttl_clock = TTLClock()
    store = LocalStore(ttl_clock=ttl_clock)
    lg = KVLangGraphStore(store, clock=SimClock(1_700_000_000.0))
    lg.put(("s", "a"), "short", {"v": 1}, ttl=1.0)
    lg.put(("s", "a"), "kept", {"v": 2})
    assert len(lg.search(("s",))) == 2
    ttl_clock.t = 61.0
    assert [i.key for i in lg.search(("s",))] == ["kept"]
    for prefix in [(), ("s",), ("s", "a")]:  # the stale entry is gone from every level
        assert [m for m, _ in store.index_range(lg._index(prefix))] == [lg._key(("s", "a"), "kept")]


def test_items_written_before_the_index_are_found(store: BaseStore) -> None:
    """A store written by the index-less KVLangGraphStore: the same records, no index."""
    for i, ns in enumerate([("old", "a"), ("old", "b")]):
        meta = {
            "v": 1,
            "namespace": list(ns),
            "key": f"k{i}",
            "value": {"i": i},
            "created_at": f"2024-01-0{i + 1}T00:00:00+00:00",
            "updated_at": f"2024-01-0{i + 1}T00:00:00+00:00",
            "ttl_min": None,
        }
        store.put_tensors(f"lg:old/{ns[1]}:k{i}", {}, meta)
    lg = KVLangGraphStore(store)
    assert [i.key for i in lg.search(("old",))] == ["k1", "k0"]  # newest first
    assert store.exists("lg:indexed-v1")
    assert lg.list_namespaces() == [("old", "a"), ("old", "b")]  # the marker is no namespace
