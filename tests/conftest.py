"""Shared fixtures: a private real redis-server, and the store backends under test.

Without the `redis-server` binary the Redis tests skip with an install hint, unless
REQUIRE_REDIS=1 (as in CI), where a missing binary is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from kv_store import LocalStore, RedisStore
from kv_store.base import BaseStore
from kv_store.redis_server import INSTALL_HINT, LocalRedisServer, find_redis_server


def _require_redis_binary() -> str:
    binary = find_redis_server()
    if binary is None:
        message = f"redis-server not found; {INSTALL_HINT}"
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


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest) -> BaseStore:
    """Each backend in turn, in a fresh namespace: the shared behaviour suite runs on both."""
    if request.param == "local":
        return LocalStore(namespace=f"test-{uuid.uuid4().hex[:12]}")
    redis_store: RedisStore = request.getfixturevalue("redis_store")
    return redis_store
