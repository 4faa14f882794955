"""A langgraph `BaseStore` over a kv_store `Store` (LocalStore or RedisStore), with TTL.

    from langgraph.store.base import BaseStore
    lg_store = KVLangGraphStore(RedisStore(url, namespace="agents"), ttl={"default_ttl": 60})
    graph = builder.compile(store=lg_store)

Encoding: one kv_store record per item, with no tensors; the item travels as JSON in the
record's meta: `{"v": 1, "namespace": [...], "key": ..., "value": {...}, "created_at": ISO,
"updated_at": ISO, "ttl_min": minutes | None}`. The record key is
`<prefix>:<label1>/<label2>/...:<key>` with every label and the key percent-encoded
(`urllib.parse.quote(..., safe="")`, then '%' written as '='), so no label can forge a
separator and plain keys stay in kv_store's readable key alphabet; langgraph already
forbids "." in labels and kv_store hashes keys longer than 200 bytes (blake2b) while still
listing them by their original names.

Index: every item is a member of one kv_store index per prefix of its namespace (the root
`()` included), named `<prefix>:<encoded namespace prefix>`, scored by its `updated_at` (epoch
seconds). A put writes the record, then adds it to its indexes; a delete takes it out of its
indexes, then deletes the record; so an item that exists is always in its indexes (an index
entry whose record is gone, after an expiry or a put racing a delete, is skipped and removed,
only while it still has the score that was seen). Stores written before the index existed
are indexed once, on the first search (`reindex()`), marked by a `<prefix>:indexed-v1` record.

Semantics:
- Ops of one batch run in order (a get after a put in the same batch sees the put).
- Namespaces and prefixes may be tuples or lists of labels.
- TTL is in minutes, as in langgraph (`PutOp.ttl`, `TTLConfig.default_ttl`); expiry is the
  backend's own (Redis PEXPIRE; LocalStore's TTL clock). Reads with `refresh_ttl` (the default,
  or `TTLConfig.refresh_on_read`) restart the TTL with the store's `touch`: the record is not
  rewritten, so a read never reverts a concurrent put or undoes a delete.
- `search`: walks the prefix's index newest first, reading records a page at a time, keeping
  those that pass `filter` (exact values, nested dicts, dotted keys as paths into nested
  values (`{"user.level": 3}`; a key that exists as written wins), and `$eq`, `$ne`, `$gt`,
  `$gte`, `$lt`, `$lte`), until `offset + limit` are found. With a `query`, every candidate
  (at most `max_scan`) is ranked by the lexical similarity of the query to its JSON text
  (`services.agent_log.lexical_similarity`; `score` is set); then offset/limit. At most
  `max_scan` index entries are read per search.
- `list_namespaces`: prefix/suffix conditions with "*" wildcards, `max_depth` truncation,
  sorted, then offset/limit (it lists the live records' keys).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from kv_store.base import Store
from memory.clock import Clock, SystemClock
from services.agent_log import lexical_similarity

FORMAT_VERSION = 1
DEFAULT_MAX_SCAN = 10_000
#: Index entries read per page of a search (doubling up to `_MAX_PAGE` while more are needed).
_FIRST_PAGE = 64
_MAX_PAGE = 2048
_NO_TENSORS: dict[str, Any] = {}


def encode_label(text: str) -> str:
    """Percent-encoding with '=' for '%' (kv_store's plain-key alphabet has '=', not '%')."""
    return quote(text, safe="").replace("%", "=")


def decode_label(text: str) -> str:
    return unquote(text.replace("=", "%"))


def encode_namespace(namespace: Sequence[str]) -> str:
    return "/".join(encode_label(label) for label in namespace)


def decode_namespace(text: str) -> tuple[str, ...]:
    return tuple(decode_label(label) for label in text.split("/")) if text else ()


class KVLangGraphStore(BaseStore):
    """langgraph `BaseStore` over a kv_store `Store`; see the module docstring."""

    supports_ttl: bool = True

    def __init__(
        self,
        store: Store,
        *,
        prefix: str = "lg",
        ttl: TTLConfig | None = None,
        clock: Clock | None = None,
        max_scan: int = DEFAULT_MAX_SCAN,
    ) -> None:
        if not prefix or not prefix.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"prefix must be letters, digits, '_' or '-', got {prefix!r}")
        if max_scan <= 0:
            raise ValueError(f"max_scan must be > 0, got {max_scan!r}")
        self.store = store
        self.prefix = prefix
        self.ttl_config = ttl
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.max_scan = max_scan
        self._indexed = False

    # -- keys ----------------------------------------------------------------------------------
    def _key(self, namespace: Sequence[str], key: str) -> str:
        return f"{self.prefix}:{encode_namespace(namespace)}:{encode_label(str(key))}"

    def _split(self, record_key: str) -> tuple[tuple[str, ...], str] | None:
        parts = record_key.split(":")
        if len(parts) != 3 or parts[0] != self.prefix:
            return None
        return decode_namespace(parts[1]), decode_label(parts[2])

    def _index(self, namespace_prefix: Sequence[str]) -> str:
        return f"{self.prefix}:{encode_namespace(namespace_prefix)}"

    def _indexes(self, namespace: Sequence[str]) -> list[str]:
        """The indexes an item of `namespace` is in: one per prefix, the root included."""
        return [self._index(namespace[:depth]) for depth in range(len(namespace) + 1)]

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), tz=UTC)

    # -- batch ---------------------------------------------------------------------------------
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        results: list[Result] = []
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise ValueError(f"unknown operation {type(op).__name__}")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.to_thread(self.batch, list(ops))

    # -- operations ----------------------------------------------------------------------------
    def _refresh(self, refresh: bool | None) -> bool:
        if refresh is not None:
            return refresh
        return bool((self.ttl_config or {}).get("refresh_on_read", True))

    def _read(self, record_key: str) -> dict[str, Any] | None:
        return item_meta(self.store.get_tensors(record_key))

    def _touch(self, record_key: str, meta: Mapping[str, Any]) -> None:
        """Restart the item's TTL without rewriting it (see the module docstring)."""
        ttl_min = meta.get("ttl_min")
        if ttl_min:
            self.store.touch(record_key, float(ttl_min) * 60.0)

    def _item(self, meta: Mapping[str, Any]) -> Item:
        return Item(
            value=meta["value"],
            key=meta["key"],
            namespace=tuple(meta["namespace"]),
            created_at=datetime.fromisoformat(meta["created_at"]),
            updated_at=datetime.fromisoformat(meta["updated_at"]),
        )

    def _get(self, op: GetOp) -> Item | None:
        record_key = self._key(op.namespace, op.key)
        meta = self._read(record_key)
        if meta is None:
            return None
        if self._refresh(op.refresh_ttl):
            self._touch(record_key, meta)
        return self._item(meta)

    def _put(self, op: PutOp) -> None:
        record_key = self._key(op.namespace, op.key)
        if op.value is None:
            self.store.index_remove(self._indexes(op.namespace), record_key)
            self.store.delete(record_key)
            return
        if not isinstance(op.value, Mapping):
            raise ValueError(f"value must be a dict, got {type(op.value).__name__}")
        ttl_min = op.ttl
        if ttl_min is not None and (
            isinstance(ttl_min, bool) or not math.isfinite(ttl_min) or ttl_min <= 0
        ):
            raise ValueError(f"ttl must be a positive number of minutes or None, got {ttl_min!r}")
        now = self._now()
        previous = self._read(record_key)
        meta = {
            "v": FORMAT_VERSION,
            "namespace": list(op.namespace),
            "key": str(op.key),
            "value": dict(op.value),
            "created_at": previous["created_at"] if previous else now.isoformat(),
            "updated_at": now.isoformat(),
            "ttl_min": ttl_min,
        }
        self.store.put_tensors(
            record_key, _NO_TENSORS, meta, ttl_s=None if ttl_min is None else ttl_min * 60.0
        )
        self.store.index_add(self._indexes(op.namespace), record_key, now.timestamp())

    def reindex(self) -> int:
        """Add every item of this store to its indexes (items written before indexes existed);
        returns how many. Safe to run again, and alongside other writers."""
        keys = [k for k in self.store.keys(f"{self.prefix}:") if self._split(k) is not None]
        count = 0
        for start in range(0, len(keys), 512):
            chunk = keys[start : start + 512]
            for record_key, record in zip(chunk, self.store.get_many(chunk), strict=True):
                meta = item_meta(record)
                if meta is not None:
                    score = datetime.fromisoformat(meta["updated_at"]).timestamp()
                    self.store.index_add(self._indexes(meta["namespace"]), record_key, score)
                    count += 1
        self.store.put_tensors(self._marker, _NO_TENSORS, {"v": FORMAT_VERSION})
        self._indexed = True
        return count

    @property
    def _marker(self) -> str:
        return f"{self.prefix}:indexed-v{FORMAT_VERSION}"

    def _candidates(self, op: SearchOp, enough: int | None) -> list[tuple[str, dict[str, Any]]]:
        """Items under the op's prefix that pass its filter, newest first, read from the
        prefix's index a page at a time until `enough` are found (None: all, up to
        `max_scan` entries)."""
        if not self._indexed and not self.store.exists(self._marker):
            self.reindex()
        self._indexed = True
        index = self._index(tuple(op.namespace_prefix))
        found: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        offset, page = 0, _FIRST_PAGE
        while offset < self.max_scan and (enough is None or len(found) < enough):
            entries = self.store.index_range(index, offset, min(page, self.max_scan - offset))
            if not entries:
                break
            offset += len(entries)
            page = min(2 * page, _MAX_PAGE)
            fresh = [(m, s) for m, s in entries if m not in seen]
            seen.update(m for m, _ in fresh)
            records = self.store.get_many([m for m, _ in fresh])
            for (member, score), record in zip(fresh, records, strict=True):
                meta = item_meta(record)
                if meta is None:
                    self._drop_stale(member, score)
                elif matches_filter(meta["value"], op.filter):
                    found.append((member, meta))
        return found

    def _drop_stale(self, record_key: str, score: float) -> None:
        """Remove an index entry whose record is gone (only while it keeps `score`)."""
        split = self._split(record_key)
        if split is not None:
            self.store.index_remove(self._indexes(split[0]), record_key, score=score)

    def _search(self, op: SearchOp) -> list[SearchItem]:
        metas = self._candidates(op, None if op.query else op.offset + op.limit)
        scores: list[float | None] = [None] * len(metas)
        order = list(range(len(metas)))  # index order: most recently updated first
        if op.query:
            texts = [json.dumps(m["value"], sort_keys=True) for _, m in metas]
            similarity = lexical_similarity(op.query, texts)
            scores = [float(s) for s in similarity]
            order = sorted(order, key=lambda i: -similarity[i])
        chosen = order[op.offset : op.offset + op.limit]
        if self._refresh(op.refresh_ttl):
            for i in chosen:
                self._touch(*metas[i])
        out = []
        for i in chosen:
            item = self._item(metas[i][1])
            out.append(
                SearchItem(
                    namespace=item.namespace,
                    key=item.key,
                    value=item.value,
                    created_at=item.created_at,
                    updated_at=item.updated_at,
                    score=scores[i],
                )
            )
        return out

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        namespaces = set()
        for record_key in self.store.keys(f"{self.prefix}:"):
            split = self._split(record_key)
            if split is not None:
                namespaces.add(split[0])
        matching = [
            ns for ns in namespaces if all(_matches(c, ns) for c in op.match_conditions or ())
        ]
        if op.max_depth is not None:
            matching = list({ns[: op.max_depth] for ns in matching})
        return sorted(matching)[op.offset : op.offset + op.limit]


def matches_filter(value: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """Whether an item's value passes a search `filter` (semantics in the module docstring)."""
    return not filter or all(_compare(_lookup(value, k), v) for k, v in filter.items())


def item_meta(record: tuple[Any, dict[str, Any]] | None) -> dict[str, Any] | None:
    """The item a kv_store record holds, or None (absent, or not an item of this format)."""
    if record is None:
        return None
    meta = record[1]
    if meta.get("v") != FORMAT_VERSION or "value" not in meta:
        return None
    return meta


def _lookup(value: Mapping[str, Any], key: str) -> Any:
    """`value[key]`, or for a dotted key that is not a key of `value`, the nested path."""
    if key in value or "." not in key:
        return value.get(key)
    current: Any = value
    for part in key.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"unsupported match type {condition.match_type!r}")
    return all(p == "*" or n == p for n, p in pairs)


def _compare(value: Any, wanted: Any) -> bool:
    """Filter semantics of langgraph's stores: exact (nested) values and $-operators."""
    if isinstance(wanted, Mapping):
        if any(str(k).startswith("$") for k in wanted):
            return all(_operator(value, k, v) for k, v in wanted.items())
        return isinstance(value, Mapping) and all(
            _compare(value.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(wanted)
            and all(_compare(a, b) for a, b in zip(value, wanted, strict=True))
        )
    return bool(value == wanted)


def _operator(value: Any, operator: str, operand: Any) -> bool:
    if operator == "$eq":
        return bool(value == operand)
    if operator == "$ne":
        return bool(value != operand)
    if operator in ("$gt", "$gte", "$lt", "$lte"):
        try:
            a, b = float(value), float(operand)
        except (TypeError, ValueError):
            return False
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[operator]
    raise ValueError(f"unsupported filter operator {operator!r}")
