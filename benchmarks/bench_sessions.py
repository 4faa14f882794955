"""Resident memory per session on session hosts, and many idle sessions on one machine.

Two session hosts (tiny-llama, ``placement="session"``: one model copy per host, a real
redis-server as the store) take sessions one step each. The resident set size (RSS) of the
host processes is read with psutil before and after every batch of new sessions; the memory
per additional session is the slope, median over batches. Then the count grows to 1,000 idle
sessions, and a sample of them is read back whole. Compared with one actor process per session
(the previous design), measured the same way on that process alone.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import psutil
import ray

from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.client import RayTransport, TempomemClient
from services.policy_worker import WorkerSpec
from services.session import SessionConfig
from services.session_host import HostSpec

HOSTS = 2
BATCH = 50
IDLE_SESSIONS = 1000
PREFIX = 8
TARGET_MB = 60.0
WORKER = WorkerSpec(
    model="tiny-llama", tempofit=TempoFitConfig(layers=[1, 2], capacity=4), placement="session"
)


def _rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def _tokens(step: int) -> list[int]:
    return [(7 * step + 3 * i) % 120 + 1 for i in range(PREFIX + 4)]


def _host_pids(client: TempomemClient) -> list[int]:
    transport = client.transport
    assert isinstance(transport, RayTransport)
    return [int(ray.get(h.stats.remote())["pid"]) for h in transport._handles.values()]


def _grow(client: TempomemClient, start: int, count: int) -> float:
    began = time.perf_counter()
    for k in range(start, start + count):
        client.step(f"s{k}", 0, _tokens(k), PREFIX)
    return time.perf_counter() - began


def run() -> str:
    namespace = f"tempomem-bench-sessions-{uuid.uuid4().hex[:6]}"
    ray.init(num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False)
    redis = LocalRedisServer().start()
    try:
        client = TempomemClient(
            "bench",
            store=redis.url,
            worker=WORKER,
            config=SessionConfig(),
            hosts=HostSpec(hosts=HOSTS, idle_evict_s=None),
        )
        _grow(client, 0, 2 * HOSTS)  # both hosts up, model loaded, allocator warm
        pids = _host_pids(client)
        per_session: list[float] = []
        count = 2 * HOSTS
        for _ in range(6):
            before = _rss_mb(pids)
            _grow(client, count, BATCH)
            count += BATCH
            per_session.append((_rss_mb(pids) - before) / BATCH)
        seconds = _grow(client, count, IDLE_SESSIONS - count)
        count = IDLE_SESSIONS
        total = _rss_mb(pids)
        sample = [client.summary(f"s{k}") for k in range(0, IDLE_SESSIONS, 97)]
        whole = all(s.last_step_id == 0 and s.frames_in_memory == 1 for s in sample)
        held = sum(
            int(ray.get(h.stats.remote())["sessions"]) for h in client.transport._handles.values()
        )  # type: ignore[attr-defined]
        single = _single_session_actor_mb()
    finally:
        ray.shutdown()
        redis.stop()
    median = statistics.median(per_session)
    batches = ", ".join(f"{v:.2f}" for v in per_session)
    return "\n".join(
        [
            f"{HOSTS} session hosts, tiny-llama with placement `session` (one model copy per "
            "host), a real redis-server; each new session takes one step.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| resident memory per additional session (median of 6 batches of {BATCH}) | "
            f"**{median:.2f} MB** ({batches}) | <= {TARGET_MB:.0f} MB |",
            f"| one actor process per session (the previous design), resident | "
            f"{single:.0f} MB | |",
            f"| ratio, previous design / session hosts, per session | "
            f"**{single / max(median, 1e-3):.0f}x** | |",
            f"| idle sessions held | **{held}** of {IDLE_SESSIONS} (sample of "
            f"{len(sample)} read back whole: {'yes' if whole else 'NO'}) | 1,000 |",
            f"| resident memory of the {HOSTS} hosts with {IDLE_SESSIONS} sessions | "
            f"{total:.0f} MB | |",
            f"| time to start {IDLE_SESSIONS - 6 * BATCH - 2 * HOSTS} more sessions "
            f"(one step each) | {seconds:.1f} s | |",
        ]
    )


class _Empty:
    def pid(self) -> int:
        import os

        return os.getpid()


def _single_session_actor_mb() -> float:
    """RSS of one actor process that imports what a session needs (torch, the session code)."""

    class _OneSession(_Empty):
        def __init__(self) -> None:
            import services.session  # noqa: F401  (torch, pydantic, the store)

    actor: Any = ray.remote(_OneSession).options(num_cpus=0).remote()  # type: ignore[attr-defined]
    pid = ray.get(actor.pid.remote())
    rss = _rss_mb([pid])
    ray.kill(actor)
    return rss


if __name__ == "__main__":
    print(run())
