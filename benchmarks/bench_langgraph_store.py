"""KVLangGraphStore search at size: through its indexes vs a full scan, on LocalStore and Redis.

`N` items (10k, 100k) spread over 100 namespaces `("bench", "u<k>")`, each `{"i": i, "kind":
"rare" for 1 % else "common", "text": ...}`. Five searches, each timed as ours (the store's own
`search`, walking the prefix's index) against the scan it replaces, side by side in one run:
list every key under the prefix (`Store.keys`), read the records (at most `max_scan`), filter,
sort by `updated_at`, slice. Beyond `max_scan` (10k) records the scan answers from whichever
10k keys it listed first, so its results are incomplete there; the index's are exact.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from langgraph.store.base import PutOp

from benchmarks.timing import compare, fmt_ms
from kv_store import LocalStore, RedisStore
from kv_store.base import BaseStore
from kv_store.redis_server import LocalRedisServer
from memory.clock import SimClock
from services.agent_log import lexical_similarity
from services.hooks.langgraph_store import (
    KVLangGraphStore,
    encode_namespace,
    item_meta,
    matches_filter,
)

SIZES = (10_000, 100_000)
NAMESPACES = 100
WORDS = ["weather", "paris", "meeting", "invoice", "robot", "arm", "coffee", "train"]
CASES: dict[str, dict[str, Any]] = {
    "newest 10 of all": {"prefix": ("bench",)},
    "newest 10 of one namespace": {"prefix": ("bench", "u7")},
    "filter (1 % match), 10": {"prefix": ("bench",), "filter": {"kind": "rare"}},
    "filter (no match)": {"prefix": ("bench",), "filter": {"kind": "absent"}},
    "query, one namespace": {"prefix": ("bench", "u7"), "query": "paris weather"},
}


def fill(lg: KVLangGraphStore, n: int) -> None:
    """`n` items, one clock tick apart, through the store's own batch of puts."""
    clock = lg.clock
    assert isinstance(clock, SimClock)
    ops = []
    for i in range(n):
        text = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} note {i}"
        value = {"i": i, "kind": "rare" if i % 100 == 0 else "common", "text": text}
        ops.append(PutOp(("bench", f"u{i % NAMESPACES}"), f"k{i}", value))
        if len(ops) == 1000:
            lg.batch(ops)
            ops = []
            clock.advance(1)
    lg.batch(ops)


def scan_search(
    lg: KVLangGraphStore,
    prefix: tuple[str, ...],
    filter: Mapping[str, Any] | None = None,
    query: str | None = None,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """The search without an index: list, read and sort every item under the prefix."""
    keys = lg.store.keys(f"{lg.prefix}:{encode_namespace(prefix)}")[: lg.max_scan]
    metas = []
    for record in lg.store.get_many(keys):
        meta = item_meta(record)
        if (
            meta is not None
            and tuple(meta["namespace"][: len(prefix)]) == prefix
            and matches_filter(meta["value"], filter)
        ):
            metas.append(meta)
    if query:
        scores = lexical_similarity(query, [str(m["value"]) for m in metas])
        order = sorted(range(len(metas)), key=lambda i: -scores[i])
        return [metas[i] for i in order[:limit]]
    return sorted(metas, key=lambda m: m["updated_at"], reverse=True)[:limit]


def measure(store: BaseStore, n: int, repeats: int) -> list[tuple[str, float, float, float]]:
    lg = KVLangGraphStore(store, clock=SimClock(1_700_000_000.0))
    fill(lg, n)
    lg.search(("bench",), limit=1)  # the one-time index check, outside the timings
    rows = []
    for name, case in CASES.items():

        def ours(case: dict[str, Any] = case) -> object:
            return lg.search(
                case["prefix"], filter=case.get("filter"), query=case.get("query"), limit=10
            )

        def scan(case: dict[str, Any] = case) -> object:
            return scan_search(lg, case["prefix"], case.get("filter"), case.get("query"))

        cmp = compare(ours, scan, repeats=repeats, warmup=1)
        rows.append((name, cmp.ours_s, cmp.baseline_s, cmp.paired_ratio))
    return rows


def run(repeats: int = 5, sizes: tuple[int, ...] = SIZES) -> str:
    lines = [
        "| store | items | search | indexed (ms) | scan (ms) | indexed / scan (paired) |",
        "|---|---|---|---|---|---|",
    ]
    with LocalRedisServer() as server:
        stores: dict[str, Callable[[], BaseStore]] = {
            "LocalStore": lambda: LocalStore(namespace=f"lg-{uuid.uuid4().hex[:8]}"),
            "RedisStore": lambda: RedisStore(server.url, namespace=f"lg-{uuid.uuid4().hex[:8]}"),
        }
        for backend, make in stores.items():
            for n in sizes:
                store = make()
                for name, ours_s, scan_s, ratio in measure(store, n, repeats):
                    lines.append(
                        f"| {backend} | {n:,} | {name} | {fmt_ms(ours_s)} | {fmt_ms(scan_s)} "
                        f"| {ratio:.4f} |"
                    )
                if isinstance(store, RedisStore):
                    store.client.flushdb()  # an empty server for the next size
                store.close()
    lines.append("")
    lines.append(
        f"Medians of {repeats} interleaved rounds after one warm-up. Items spread over "
        f"{NAMESPACES} namespaces; `limit=10`. Indexed: `KVLangGraphStore.search` (the prefix's "
        "index, newest first, a page of records at a time); scan: list every key under the "
        "prefix, read up to `max_scan` (10k) records, filter, sort (what search did before the "
        "index). A query ranks every candidate, so both read the namespace's items there; a "
        "filter that matches nothing reads `max_scan` index entries and their records."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="KVLangGraphStore search at size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    print(run(args.repeats, tuple(args.sizes)))
