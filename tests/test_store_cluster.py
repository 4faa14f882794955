"""RedisStore on a real 3-master Redis Cluster: hash-tagged key families, keys on every shard,
and a killed master seen as `StoreUnavailable` in bounded time. (The shared behaviour suite runs
on the cluster too, through the `store` fixture.)"""

from __future__ import annotations

import time

import pytest
import torch
from redis.crc import key_slot

from kv_store import RedisStore, StoreUnavailable
from kv_store.redis_cluster_server import NODE_TIMEOUT_MS, LocalRedisCluster
from services.session import StoreSpec


def _node_of(store: RedisStore, redis_key: str) -> int:
    node = store.client.get_node_from_key(redis_key)
    return int(node.port)


def test_a_session_family_shares_one_slot(cluster_store: RedisStore) -> None:
    record = cluster_store.object_key("session/robot/r1")
    assert record == f"tm:{{{cluster_store.namespace}:session/robot/r1}}:obj:session/robot/r1"
    family = [
        record,
        cluster_store.object_key("session/robot/r1/frames"),
        cluster_store.stream_key("session/robot/r1/events"),
        cluster_store.index_key("session/robot/r1/by-time"),
    ]
    assert len({key_slot(k.encode()) for k in family}) == 1
    other = cluster_store.object_key("session/robot/r2")
    assert other.startswith(f"tm:{{{cluster_store.namespace}:session/robot/r2}}:")
    # multi-key operations on one family run as one transaction in its slot
    cluster_store.put_many(
        {
            f"session/robot/r1/part{i}": ({"x": torch.full((2,), float(i))}, {"i": i})
            for i in range(4)
        }
    )
    found = cluster_store.get_many([f"session/robot/r1/part{i}" for i in range(4)])
    assert [r[1]["i"] for r in found if r is not None] == [0, 1, 2, 3]


def test_sessions_spread_over_every_master_and_are_listed(cluster_store: RedisStore) -> None:
    keys = [f"session/robot/r{i}" for i in range(30)]
    cluster_store.put_many({k: ({"x": torch.ones(1) * i}, None) for i, k in enumerate(keys)})
    ports = {_node_of(cluster_store, cluster_store.object_key(k)) for k in keys}
    assert len(ports) == 3  # 30 families over 16384 slots: all three masters hold some
    long_key = "session/robot/" + "y" * 300
    cluster_store.put_tensors(long_key, {"x": torch.zeros(1)})
    assert cluster_store.keys() == sorted([*keys, long_key])
    assert cluster_store.keys("session/robot/r2") == ["session/robot/r2"] + [
        f"session/robot/r{i}" for i in range(20, 30)
    ]
    found = cluster_store.get_many(keys)  # across slots and nodes, in order
    assert [float(r[0]["x"]) for r in found if r is not None] == [float(i) for i in range(30)]


def test_killed_master_is_unavailable_in_bounded_time(private_cluster: LocalRedisCluster) -> None:
    store = RedisStore(private_cluster.url, namespace="outage", socket_timeout_s=1.0)
    keys = [f"session/robot/r{i}" for i in range(24)]
    for k in keys:
        store.put_tensors(k, {"x": torch.ones(2)})
    dead_port = private_cluster.nodes[1].port
    on_dead = {k for k in keys if _node_of(store, store.object_key(k)) == dead_port}
    assert on_dead and len(on_dead) < len(keys)
    private_cluster.kill(1)

    started = time.monotonic()
    for k in keys:  # before the cluster notices: the dead master's slots fail, others answer
        if k in on_dead:
            with pytest.raises(StoreUnavailable, match="unavailable"):
                store.get_tensors(k)
            with pytest.raises(StoreUnavailable):
                store.put_tensors(k, {"x": torch.zeros(2)})
        else:
            assert store.get_tensors(k) is not None
    assert time.monotonic() - started < 10

    time.sleep(NODE_TIMEOUT_MS / 1000 * 2)  # the cluster marks itself down (no replicas)
    started = time.monotonic()
    for k in keys[:6]:
        with pytest.raises(StoreUnavailable):
            store.get_tensors(k)
    with pytest.raises(StoreUnavailable):
        store.append_event("session/robot/r0/events", {"t": 1.0})
    with pytest.raises(StoreUnavailable):
        store.keys()
    assert time.monotonic() - started < 10

    private_cluster.nodes[1].start()  # same node id and slots (its nodes.conf), no data
    deadline = time.monotonic() + 20
    while True:
        try:
            store.put_tensors(keys[0], {"x": torch.full((2,), 3.0)})
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the cluster did not come back"
            time.sleep(0.2)
    found = store.get_tensors(keys[0])
    assert found is not None and torch.equal(found[0]["x"], torch.full((2,), 3.0))


def test_unreachable_cluster_is_an_error_only_when_used() -> None:
    from kv_store.redis_server import free_port

    store = RedisStore(f"redis+cluster://127.0.0.1:{free_port()}", socket_timeout_s=0.5)
    assert store.cluster
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get_tensors("k")


def test_cluster_urls_and_store_spec(redis_cluster: LocalRedisCluster) -> None:
    plain = redis_cluster.url.replace("redis+cluster://", "redis://")
    assert RedisStore(plain, cluster=True).cluster
    assert not RedisStore(plain).cluster
    with pytest.raises(ValueError, match="contradicts"):
        RedisStore(redis_cluster.url, cluster=False)
    with pytest.raises(ValueError, match="not a Redis store URL"):
        RedisStore("http://:secret@host:1")
    built = StoreSpec(url=redis_cluster.url).build("tenant-a")
    assert isinstance(built, RedisStore) and built.cluster
    built.put_tensors("session/robot/x", {"x": torch.ones(1)})
    assert built.with_namespace("tenant-b").get_tensors("session/robot/x") is None
    assert built.get_tensors("session/robot/x") is not None
    built.delete("session/robot/x")
