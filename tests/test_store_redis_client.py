"""The Redis client layer: cluster URLs, and the command packer that sends a record's buffers
without copying them (checked byte for byte against the RESP protocol, and against a server)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from kv_store import redact_url, store_kind
from kv_store.redis_client import SEND_AS_IS_BYTES, Gather, RecordPacker, open_client
from kv_store.redis_server import LocalRedisServer
from kv_store.urls import redis_target


def _resp(*args: bytes) -> bytes:
    """The RESP encoding of a command, written out from the protocol's definition."""
    out = b"*%d\r\n" % len(args)
    for arg in args:
        out += b"$%d\r\n%s\r\n" % (len(arg), arg)
    return out


def test_packer_matches_the_protocol_and_sends_big_parts_as_they_are() -> None:
    big = np.arange(SEND_AS_IS_BYTES, dtype=np.uint8)
    parts = [b"head", memoryview(big), b"", memoryview(b"tail")]
    value = b"".join(bytes(p) for p in parts)
    packed = RecordPacker().pack("SET", "k", Gather(parts), "PX", 1500)
    assert b"".join(bytes(c) for c in packed) == _resp(b"SET", b"k", value, b"PX", b"1500")
    assert any(isinstance(c, memoryview) and c.obj is big for c in packed)  # not copied
    assert RecordPacker().pack("CLUSTER SLOTS") == [_resp(b"CLUSTER", b"SLOTS")]
    floats = RecordPacker().pack("ZADD", b"ix", 0.1, "m")
    assert b"".join(floats) == _resp(b"ZADD", b"ix", repr(0.1).encode(), b"m")


def test_gathered_values_arrive_whole(redis_server: LocalRedisServer) -> None:
    client = open_client(redis_server.url, cluster=False, socket_timeout_s=2.0)
    big = np.random.default_rng(0).integers(0, 255, 3 * SEND_AS_IS_BYTES, dtype=np.uint8)
    parts = [b"\x00" * 7, memoryview(big), memoryview(big[:100])]
    client.set("gathered", Gather(parts))  # type: ignore[arg-type]
    pipe = client.pipeline(transaction=True)
    pipe.set("gathered2", Gather(parts))  # type: ignore[arg-type]
    pipe.get("gathered")
    _, through_pipeline = pipe.execute()
    expected = b"".join(bytes(p) for p in parts)
    assert client.get("gathered") == expected == through_pipeline == client.get("gathered2")
    assert redis.Redis.from_url(redis_server.url).get("gathered") == expected
    client.delete("gathered", "gathered2")
    client.close()


def test_cluster_urls() -> None:
    assert redis_target("redis+cluster://db:7000") == ("redis://db:7000", True)
    assert redis_target("rediss://db:6380/0") == ("rediss://db:6380/0", False)
    assert store_kind("rediss+cluster://u:pw@db:7000") == "rediss+cluster"
    assert redact_url("redis+cluster://u:s3cret@db:7000") == "redis+cluster://u:***@db:7000"
    with pytest.raises(ValueError) as err:
        redis_target("memcached://:s3cret@db")
    assert "s3cret" not in str(err.value)
