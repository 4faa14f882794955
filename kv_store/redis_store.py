"""`RedisStore`: state in a real Redis server, for deployments.

Layout under `tm:{namespace}:`
- `obj:{name}`: one STRING per record, the codec's bytes (header and tensors in one value, so
  the two can never disagree); TTL set in the same `SET ... PX` command.
- `ev:{name}`: one Stream per event log; entry ids are the events' own times in ms
  (`XADD ... MAXLEN ~ n <ms>-*`), so time-range reads are `XRANGE`.
`name` is the key itself when short and plain, else `#` + its blake2b digest; the original key is
kept in the record header so that `keys()` can report it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kv_store.base import BaseStore, Record, storage_name
from kv_store.codec import decode_record, encode_checked, peek_header
from kv_store.errors import CorruptRecord, StoreUnavailable
from kv_store.urls import redact_url

_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisStore(BaseStore):
    """Store backed by a Redis server at `url` (e.g. `redis://127.0.0.1:6379/0`).

    Args:
        url: a redis-py URL.
        namespace: tenant/namespace; a store never reads, lists or deletes outside it.
        socket_timeout_s: per-command timeout; a dead or hung server raises `StoreUnavailable`
            after about this long instead of blocking a control loop.
        client: an existing `redis.Redis` (bytes responses) to share a connection pool.
        max_record_bytes, max_event_bytes, max_events_per_stream, event_clock: see `BaseStore`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "default",
        *,
        socket_timeout_s: float = 5.0,
        client: redis.Redis | None = None,
        **options: Any,
    ) -> None:
        super().__init__(namespace, **options)
        self.url = url  # may hold a password: show `display_url`, never this
        self.display_url = redact_url(url)
        self._options = options
        self._socket_timeout_s = socket_timeout_s
        self._client = client or redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=min(socket_timeout_s, 2.0),
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
        self._prefix = f"tm:{self.namespace}:"

    def __repr__(self) -> str:
        return f"RedisStore({self.display_url!r}, namespace={self.namespace!r})"

    def with_namespace(self, namespace: str) -> RedisStore:
        return RedisStore(
            self.url,
            namespace,
            socket_timeout_s=self._socket_timeout_s,
            client=self._client,
            **self._options,
        )

    @property
    def client(self) -> redis.Redis:
        return self._client

    def object_key(self, key: str) -> str:
        """The Redis key a record is stored under (for operators and tests)."""
        return f"{self._prefix}obj:{storage_name(key)}"

    def stream_key(self, stream: str) -> str:
        return f"{self._prefix}ev:{storage_name(stream)}"

    # -- tensors -------------------------------------------------------------------------------
    def _raw_put_many(self, records: dict[str, Record], ttl_s: float | None) -> None:
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        encoded = {
            self.object_key(key): encode_checked(
                tensors, meta, key=key, max_bytes=self.max_record_bytes
            )
            for key, (tensors, meta) in records.items()
        }
        with self._available():
            if len(encoded) == 1:
                [(name, value)] = encoded.items()
                self._client.set(name, value, px=px)
                return
            pipe = self._client.pipeline(transaction=True)
            for name, value in encoded.items():
                pipe.set(name, value, px=px)
            pipe.execute()

    def _raw_get_many(self, keys: list[str]) -> list[Record | None]:
        names = [self.object_key(k) for k in keys]
        with self._available():
            try:
                values = (
                    [self._client.get(names[0])] if len(names) == 1 else self._client.mget(names)
                )
            except redis.exceptions.ResponseError as err:  # WRONGTYPE: not written by us
                raise CorruptRecord(f"{keys[0]!r} does not hold a tempomem record: {err}") from err
        return [
            None if v is None else self._decode(k, cast(bytes, v))
            for k, v in zip(keys, values, strict=True)
        ]

    def _raw_delete(self, key: str) -> bool:
        with self._available():
            return bool(self._client.delete(self.object_key(key)))

    def _raw_exists(self, key: str) -> bool:
        with self._available():
            return bool(self._client.exists(self.object_key(key)))

    def _raw_keys(self, prefix: str) -> list[str]:
        obj_prefix = f"{self._prefix}obj:"
        with self._available():
            names = [
                n.decode()
                for n in self._client.scan_iter(match=_glob_escape(obj_prefix) + "*", count=1000)
            ]
            plain = [
                n[len(obj_prefix) :] for n in names if not n[len(obj_prefix) :].startswith("#")
            ]
            hashed = [n for n in names if n[len(obj_prefix) :].startswith("#")]
            originals = []
            for name in hashed:  # rare: only long or unusual keys are hashed
                head = cast(bytes, self._client.getrange(name, 0, 64 * 1024 - 1))
                try:
                    originals.append(str(peek_header(head)["key"]))
                except (CorruptRecord, KeyError):
                    continue
        return [k for k in plain + originals if k.startswith(prefix)]

    # -- events --------------------------------------------------------------------------------
    def _raw_append_event(self, stream: str, ms: int, payload: str) -> str:
        try:
            with self._available():
                event_id = self._client.xadd(
                    self.stream_key(stream),
                    {"j": payload},
                    id=f"{ms}-*",
                    maxlen=self.max_events_per_stream,
                    approximate=True,
                )
        except redis.exceptions.ResponseError as err:
            if "equal or smaller" in str(err):
                raise ValueError(
                    f"event time goes backwards in stream {stream!r}: {ms} ms is before the "
                    "stream's last event"
                ) from err
            raise
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    def _raw_read_events(
        self, stream: str, lo_ms: int | None, hi_ms: int | None
    ) -> list[tuple[str, str | bytes]]:
        lo = "-" if lo_ms is None else str(lo_ms)
        hi = "+" if hi_ms is None else f"{hi_ms}-18446744073709551615"
        with self._available():
            try:
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    self._client.xrange(self.stream_key(stream), min=lo, max=hi),
                )
            except redis.exceptions.ResponseError as err:
                raise CorruptRecord(f"stream {stream!r} is not a Redis stream: {err}") from err
        out: list[tuple[str, str | bytes]] = []
        for event_id, fields in entries:
            eid = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
            if b"j" not in fields:
                raise CorruptRecord(f"event {eid} in stream {stream!r} has no payload field")
            out.append((eid, fields[b"j"]))
        return out

    def _raw_delete_stream(self, stream: str) -> bool:
        with self._available():
            return bool(self._client.delete(self.stream_key(stream)))

    # -- connection ----------------------------------------------------------------------------
    def ping(self) -> bool:
        with self._available():
            return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()

    @contextmanager
    def _available(self) -> Iterator[None]:
        try:
            yield
        except _UNAVAILABLE as err:
            raise StoreUnavailable(f"Redis at {self.display_url} is unavailable: {err}") from err
        except redis.exceptions.BusyLoadingError as err:
            raise StoreUnavailable(
                f"Redis at {self.display_url} is loading its dataset: {err}"
            ) from err

    def _decode(self, key: str, value: bytes) -> Record:
        return decode_record(value, max_bytes=self.max_record_bytes, expect_key=key)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
