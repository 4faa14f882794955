"""The redis-py client behind `RedisStore`: one server or a Redis Cluster, built on first use.

Records go out without being copied into one byte string: a `Gather` argument (a list of
buffers that together make one value, e.g. the codec's header and views of the tensors) is sent
as a single RESP bulk string straight from those buffers. redis-py's own packer (hiredis's
included) would first copy every value into one command buffer; `RecordPacker` writes the
protocol itself and hands large buffers to the socket as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import Encoder
from redis.retry import Retry

#: Errors that mean "the store cannot answer now" (never "your data is bad").
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,  # includes MasterDownError
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.MaxConnectionsError,
    OSError,
)
#: Values at least this large are handed to the socket as they are; smaller ones are copied
#: into the command buffer (fewer system calls).
SEND_AS_IS_BYTES = 16 * 1024
_CRLF = b"\r\n"


@dataclass(frozen=True)
class Gather:
    """One command argument made of several buffers, sent back to back without a copy."""

    parts: Sequence[bytes | memoryview]

    @property
    def nbytes(self) -> int:
        return sum(memoryview(part).nbytes for part in self.parts)


class RecordPacker:
    """RESP command packer (redis-py's `command_packer` hook) that sends `Gather` arguments and
    large values without copying them."""

    def __init__(self) -> None:
        self._encode = Encoder("utf-8", "strict", False).encode

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        if isinstance(args[0], str):  # "CLUSTER SLOTS"-style names are several arguments
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        out: list[bytes | memoryview] = []
        pending = [b"*%d\r\n" % len(args)]
        for arg in args:
            parts = arg.parts if isinstance(arg, Gather) else [self._encode(arg)]
            pending.append(b"$%d\r\n" % sum(memoryview(p).nbytes for p in parts))
            for part in parts:
                if memoryview(part).nbytes >= SEND_AS_IS_BYTES:
                    out.append(b"".join(pending))
                    out.append(part if isinstance(part, memoryview) else memoryview(part))
                    pending = []
                else:
                    pending.append(bytes(part))
            pending.append(_CRLF)
        out.append(b"".join(pending))
        return out


class RecordConnectionPool(redis.ConnectionPool):
    """A connection pool whose connections pack commands with `RecordPacker`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("command_packer", RecordPacker())
        super().__init__(**kwargs)


Client = redis.Redis | RedisCluster


def open_client(url: str, *, cluster: bool, socket_timeout_s: float) -> Client:
    """A client for `url` (a plain redis:// or rediss:// URL). A cluster client connects (to
    learn the slot map) here; a single-server client connects on its first command."""
    timeouts = {
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": min(socket_timeout_s, 2.0),
    }
    if cluster:
        return RedisCluster.from_url(
            url,
            retry=Retry(NoBackoff(), 1),
            connection_pool_class=RecordConnectionPool,
            decode_responses=False,
            **timeouts,
        )
    pool = RecordConnectionPool.from_url(
        url, retry=Retry(NoBackoff(), 1), decode_responses=False, **timeouts
    )
    return redis.Redis(connection_pool=pool)


class LazyClient:
    """Builds a client on first use and shares it (between the namespace views of one store).

    Building can fail (an unreachable cluster); the next use tries again."""

    def __init__(self, factory: Callable[[], Client], *, sends_gather: bool) -> None:
        self._factory = factory
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.sends_gather = sends_gather

    @classmethod
    def of(cls, client: Client) -> LazyClient:
        """An existing client (its packer may not know `Gather`: records are joined first)."""
        lazy = cls(lambda: client, sends_gather=False)
        lazy._client = client
        return lazy

    def get(self) -> Client:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._factory()
                client = self._client
        return client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
