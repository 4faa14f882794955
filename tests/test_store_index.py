"""The Store's TTL refresh (`touch`) and ordered indexes, on every backend (`store` fixture:
LocalStore, RedisStore, RedisStore on a Redis Cluster)."""

from __future__ import annotations

import time

import pytest
import torch

from kv_store.base import BaseStore


def test_touch_restarts_a_ttl_without_rewriting(store: BaseStore) -> None:
    store.put_tensors("k", {"x": torch.arange(3)}, meta={"v": 1}, ttl_s=0.4)
    time.sleep(0.25)
    assert store.touch("k", 1.0)
    time.sleep(0.3)  # past the first TTL, inside the restarted one
    found = store.get_tensors("k")
    assert found is not None and found[1] == {"v": 1}
    assert torch.equal(found[0]["x"], torch.arange(3))


def test_touch_never_adds_a_ttl_or_revives(store: BaseStore) -> None:
    store.put_tensors("forever", {"x": torch.ones(1)})
    assert not store.touch("forever", 0.1)  # written without a TTL: stays without
    assert not store.touch("absent", 5.0)
    time.sleep(0.25)
    assert store.exists("forever") and not store.exists("absent")
    store.put_tensors("gone", {"x": torch.ones(1)}, ttl_s=30)
    store.delete("gone")
    assert not store.touch("gone", 30) and not store.exists("gone")
    with pytest.raises(ValueError, match="ttl_s"):
        store.touch("forever", 0)


def test_index_order_ties_paging_and_rescoring(store: BaseStore) -> None:
    for member, score in [("a", 1.0), ("b", 3.0), ("c", 2.0), ("d", 3.0), ("e", -1.5)]:
        store.index_add(["ix", "ix2"], member, score)
    everything = [("d", 3.0), ("b", 3.0), ("c", 2.0), ("a", 1.0), ("e", -1.5)]
    assert store.index_range("ix") == everything  # highest first; ties: member descending
    assert store.index_range("ix2") == everything
    assert store.index_range("ix", offset=1, limit=2) == everything[1:3]
    assert store.index_range("ix", offset=4, limit=10) == everything[4:]
    assert store.index_range("ix", offset=9) == [] and store.index_range("ix", limit=0) == []
    store.index_add(["ix"], "e", 10.0)  # re-adding replaces the score
    assert store.index_range("ix", limit=1) == [("e", 10.0)]
    assert store.index_range("never") == []


def test_index_remove_plain_and_only_if_unchanged(store: BaseStore) -> None:
    store.index_add(["p", "q"], "m", 1700000000.123456)
    store.index_add(["p"], "n", 5.0)
    store.index_remove(["p", "q"], "m", score=1700000000.123457)  # score moved on: kept
    assert ("m", 1700000000.123456) in store.index_range("p")
    store.index_remove(["p", "q"], "m", score=1700000000.123456)
    assert store.index_range("p") == [("n", 5.0)] and store.index_range("q") == []
    store.index_remove(["p", "absent-index"], "n")
    store.index_remove(["p"], "never-there")
    assert store.index_range("p") == []


def test_index_bad_input_and_namespaces(store: BaseStore) -> None:
    with pytest.raises(ValueError, match="score"):
        store.index_add(["ix"], "m", float("nan"))
    with pytest.raises(ValueError, match="indexes"):
        store.index_add("ix", "m", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="member"):
        store.index_add(["ix"], "", 1.0)
    with pytest.raises(ValueError, match="offset"):
        store.index_range("ix", offset=-1)
    assert store.index_range("ix") == []  # nothing half-written
    other = store.with_namespace(store.namespace + "-other")
    store.index_add(["shared", "long/" + "x" * 300], "mine", 1.0)
    assert other.index_range("shared") == []
    assert store.index_range("long/" + "x" * 300) == [("mine", 1.0)]
    store.index_remove(["shared", "long/" + "x" * 300], "mine")
