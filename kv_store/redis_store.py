"""`RedisStore`: state in a real Redis server or a Redis Cluster, for deployments.

Layout under `tm:{namespace}:` (one server)
- `obj:{name}`: one STRING per record, the codec's bytes (header and tensors in one value, so
  the two can never disagree); TTL set in the same `SET ... PX` command.
- `ev:{name}`: one Stream per event log; entry ids are the events' own times in ms
  (`XADD ... MAXLEN ~ n <ms>-*`), so time-range reads are `XRANGE`.
- `ix:{name}`: one sorted set per index (member -> score).
`name` is the key itself when short and plain, else `#` + its blake2b digest; the original key is
kept in the record header so that `keys()` can report it.

On a Redis Cluster (`cluster=True`, or a `redis+cluster://` URL) every Redis key carries its
key family (`kv_store.base.key_family`) as a hash tag: `tm:{<namespace>:<family name>}:obj:<name>`
(likewise `ev:` and `ix:`), so all keys of one session live in one slot, where multi-key
commands and transactions work. One-server keys have no hash tag and are unchanged; the two
layouts are separate deployments (moving data from one server into a cluster is a copy under
the new names, e.g. with `keys()`/`get_many`/`put_many`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from kv_store.base import BaseStore, Record, key_family, storage_name
from kv_store.codec import decode_record, encode_parts, peek_header
from kv_store.errors import CorruptRecord, StoreUnavailable
from kv_store.redis_client import UNAVAILABLE_ERRORS, Client, Gather, LazyClient, open_client
from kv_store.urls import redact_url, redis_target

# Removes an index member only while it still has the score the caller saw (one key: atomic,
# and cluster-safe).
_REMOVE_IF_SCORE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class RedisStore(BaseStore):
    """Store backed by a Redis server (or cluster) at `url`, e.g. `redis://127.0.0.1:6379/0` or
    `redis+cluster://10.0.0.5:7000`.

    Args:
        url: a redis-py URL; the `+cluster` schemes name a Redis Cluster.
        namespace: tenant/namespace; a store never reads, lists or deletes outside it.
        cluster: True for a Redis Cluster (`redis-py`'s `RedisCluster`); None: from the URL.
        socket_timeout_s: per-command timeout; a dead or hung server raises `StoreUnavailable`
            after about this long instead of blocking a control loop.
        client: an existing `redis.Redis` or `RedisCluster` (bytes responses) to share its
            connection pool.
        max_record_bytes, max_event_bytes, max_events_per_stream, event_clock: see `BaseStore`.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "default",
        *,
        cluster: bool | None = None,
        socket_timeout_s: float = 5.0,
        client: Client | None = None,
        _shared: LazyClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(namespace, **options)
        self.url = url  # may hold a password: show `display_url`, never this
        self.display_url = redact_url(url)
        plain_url, url_says_cluster = redis_target(url)
        if client is not None:
            cluster = isinstance(client, RedisCluster) if cluster is None else cluster
        elif cluster is None:
            cluster = url_says_cluster
        elif url_says_cluster and not cluster:
            raise ValueError(f"cluster=False contradicts the cluster URL {self.display_url!r}")
        self.cluster = cluster
        self._options = options
        self._socket_timeout_s = socket_timeout_s
        if _shared is not None:
            self._shared = _shared
        elif client is not None:
            self._shared = LazyClient.of(client)
        else:
            self._shared = LazyClient(
                lambda: open_client(
                    plain_url, cluster=bool(cluster), socket_timeout_s=socket_timeout_s
                ),
                sends_gather=True,
            )
        self._prefix = f"tm:{self.namespace}:"

    def __repr__(self) -> str:
        cluster = ", cluster=True" if self.cluster else ""
        return f"RedisStore({self.display_url!r}, namespace={self.namespace!r}{cluster})"

    def with_namespace(self, namespace: str) -> RedisStore:
        return RedisStore(
            self.url,
            namespace,
            cluster=self.cluster,
            socket_timeout_s=self._socket_timeout_s,
            _shared=self._shared,
            **self._options,
        )

    @property
    def client(self) -> Client:
        """The redis-py client (built on first use; `StoreUnavailable` if a cluster cannot be
        reached)."""
        with self._available():
            return self._shared.get()

    def object_key(self, key: str) -> str:
        """The Redis key a record is stored under (for operators and tests)."""
        return self._redis_key("obj", key)

    def stream_key(self, stream: str) -> str:
        return self._redis_key("ev", stream)

    def index_key(self, index: str) -> str:
        return self._redis_key("ix", index)

    def _redis_key(self, kind: str, key: str) -> str:
        if self.cluster:
            tag = f"{self.namespace}:{storage_name(key_family(key))}"
            return f"tm:{{{tag}}}:{kind}:{storage_name(key)}"
        return f"{self._prefix}{kind}:{storage_name(key)}"

    # -- tensors -------------------------------------------------------------------------------
    def _raw_put_many(self, records: dict[str, Record], ttl_s: float | None) -> None:
        px = None if ttl_s is None else max(1, round(ttl_s * 1000))
        values = {}
        for key, (tensors, meta) in records.items():
            parts = encode_parts(tensors, meta, key=key, max_bytes=self.max_record_bytes)
            values[self.object_key(key)] = (
                Gather(parts) if self._shared.sends_gather else b"".join(parts)
            )
        with self._available():
            client = self._shared.get()
            if len(values) == 1:
                [(name, value)] = values.items()
                client.set(name, cast(Any, value), px=px)
                return
            for group in self._same_slot_groups(list(values)):  # each group: one transaction
                pipe = client.pipeline(transaction=True)
                for name in group:
                    pipe.set(name, cast(Any, values[name]), px=px)
                pipe.execute()

    def _raw_get_many(self, keys: list[str]) -> list[Record | None]:
        names = [self.object_key(k) for k in keys]
        with self._available(), _not_ours(f"{keys[0]!r} does not hold a tempomem record"):
            client = self._shared.get()
            if len(names) == 1:
                values = [client.get(names[0])]
            elif self.cluster:
                values = cast(RedisCluster, client).mget_nonatomic(names)
            else:
                values = client.mget(names)
        return [
            None if v is None else self._decode(k, cast(bytes, v))
            for k, v in zip(keys, values, strict=True)
        ]

    def _raw_delete(self, key: str) -> bool:
        with self._available():
            return bool(self._shared.get().delete(self.object_key(key)))

    def _raw_exists(self, key: str) -> bool:
        with self._available():
            return bool(self._shared.get().exists(self.object_key(key)))

    def _raw_touch(self, key: str, ttl_s: float) -> bool:
        with self._available():
            ms = max(1, round(ttl_s * 1000))
            return bool(self._shared.get().pexpire(self.object_key(key), ms, xx=True))

    def _raw_keys(self, prefix: str) -> list[str]:
        pattern = (
            f"tm:{{{self.namespace}:*" if self.cluster else _glob_escape(self._prefix) + "obj:*"
        )
        found = []
        with self._available():
            client = self._shared.get()
            for raw_name in client.scan_iter(match=pattern, count=1000):
                name = raw_name.decode()
                stored = self._stored_name(name, "obj")
                if stored is None or not stored.startswith("#"):
                    found.append(stored)
                    continue
                # A hashed name (rare: long or unusual keys): the key is in the record header.
                head = cast(bytes, client.getrange(name, 0, 64 * 1024 - 1))
                try:
                    found.append(str(peek_header(head)["key"]))
                except CorruptRecord:
                    continue
        return [k for k in found if k is not None and k.startswith(prefix)]

    # -- indexes -------------------------------------------------------------------------------
    def _raw_index_add(self, indexes: list[str], member: str, score: float) -> None:
        with self._available():
            pipe = self._shared.get().pipeline(transaction=False)
            for index in indexes:
                pipe.zadd(self.index_key(index), {member: score})
            pipe.execute()

    def _raw_index_remove(self, indexes: list[str], member: str, score: float | None) -> None:
        with self._available():
            client = self._shared.get()
            if score is None:
                pipe = client.pipeline(transaction=False)
                for index in indexes:
                    pipe.zrem(self.index_key(index), member)
                pipe.execute()
                return
            for index in indexes:
                client.eval(_REMOVE_IF_SCORE, 1, self.index_key(index), member, repr(score))

    def _raw_index_range(
        self, index: str, offset: int, limit: int | None
    ) -> list[tuple[str, float]]:
        end = -1 if limit is None else offset + limit - 1
        with self._available(), _not_ours(f"index {index!r} is not a sorted set"):
            pairs = self._shared.get().zrevrange(
                self.index_key(index), offset, end, withscores=True
            )
        return [(m.decode(), float(s)) for m, s in cast(list[tuple[bytes, float]], pairs)]

    # -- events --------------------------------------------------------------------------------
    def _raw_append_event(self, stream: str, ms: int, payload: str) -> str:
        try:
            with self._available():
                event_id = self._shared.get().xadd(
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
        with self._available(), _not_ours(f"stream {stream!r} is not a Redis stream"):
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self._shared.get().xrange(self.stream_key(stream), min=lo, max=hi),
            )
        out: list[tuple[str, str | bytes]] = []
        for event_id, fields in entries:
            eid = event_id.decode() if isinstance(event_id, bytes) else str(event_id)
            if b"j" not in fields:
                raise CorruptRecord(f"event {eid} in stream {stream!r} has no payload field")
            out.append((eid, fields[b"j"]))
        return out

    def _raw_delete_stream(self, stream: str) -> bool:
        with self._available():
            return bool(self._shared.get().delete(self.stream_key(stream)))

    # -- connection ----------------------------------------------------------------------------
    def ping(self) -> bool:
        with self._available():
            return bool(self._shared.get().ping())

    def close(self) -> None:
        self._shared.close()

    @contextmanager
    def _available(self) -> Iterator[None]:
        try:
            yield
        except UNAVAILABLE_ERRORS as err:
            raise StoreUnavailable(f"Redis at {self.display_url} is unavailable: {err}") from err
        except redis.exceptions.RedisClusterException as err:  # no node answered the slot map
            raise StoreUnavailable(f"Redis Cluster at {self.display_url}: {err}") from err

    def _same_slot_groups(self, names: list[str]) -> list[list[str]]:
        if not self.cluster:
            return [names]
        groups: dict[int, list[str]] = {}
        for name in names:
            groups.setdefault(key_slot(name.encode()), []).append(name)
        return list(groups.values())

    def _stored_name(self, redis_key: str, kind: str) -> str | None:
        """The stored name in a Redis key of `kind` (None: a key of another kind)."""
        rest = redis_key.split("}:", 1)[1] if self.cluster else redis_key[len(self._prefix) :]
        return rest[len(kind) + 1 :] if rest.startswith(f"{kind}:") else None

    def _decode(self, key: str, value: bytes) -> Record:
        return decode_record(value, max_bytes=self.max_record_bytes, expect_key=key)


@contextmanager
def _not_ours(what: str) -> Iterator[None]:
    """A server's error answer (WRONGTYPE: a key we did not write) as `CorruptRecord`; answers
    that mean the cluster cannot serve now (CLUSTERDOWN, TRYAGAIN) pass on to `_available`."""
    try:
        yield
    except redis.exceptions.ResponseError as err:
        if isinstance(err, UNAVAILABLE_ERRORS):
            raise
        raise CorruptRecord(f"{what}: {err}") from err


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
