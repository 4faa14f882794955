"""The write-behind of one session: a thread that commits the newest snapshot to the store.

Snapshots coalesce (only the newest pending one is written: a session's state is whole in each)
and are never reordered. When a write fails with ``StoreUnavailable`` the writer marks the store
unavailable, keeps the snapshot, and probes the store in the background every
``probe_interval_s``; the session's step path therefore never waits on a sick store. Once a
probe is answered, ``status().store_answers`` is True and the session decides when to
``resume()`` (after restoring, if it has to).

The session reads the writer only through ``status()`` and waits only through ``flush()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kv_store import StoreUnavailable
from kv_store.base import BaseStore
from kv_store.state import split_state

log = logging.getLogger(__name__)

MEMORY_PREFIX = "mem/"


@dataclass(frozen=True)
class Snapshot:
    """Everything one store write needs; immutable once handed to the writer."""

    version: int
    step_id: int | None
    memory: Any  # the policy backend's form of the memory; never mutated once taken
    meta: dict[str, Any]


@dataclass(frozen=True)
class WriterStatus:
    available: bool  # the last write succeeded (or none failed since resume())
    store_answers: bool  # unavailable, but a background probe was answered since
    pending: bool  # a snapshot is waiting or being written
    committed_version: int
    committed_step_id: int | None
    oldest_pending_at: float | None  # time.monotonic() of the oldest uncommitted submit
    writes: int
    failures: int


class WriteBehind:
    """Commits the newest ``Snapshot`` of one session under ``key``.

    Args:
        store: the tenant's store.
        key: the session's record key.
        ttl_s: record time-to-live (None: none).
        to_state: the policy backend's memory -> state dict (runs in the writer thread).
        probe_interval_s: how often an unavailable store is pinged in the background.
    """

    def __init__(
        self,
        store: BaseStore,
        key: str,
        ttl_s: float | None,
        to_state: Callable[[Any], Mapping[str, Any] | None],
        probe_interval_s: float = 0.5,
    ) -> None:
        self._store, self._key, self._ttl_s = store, key, ttl_s
        self._to_state = to_state
        self._probe_interval_s = probe_interval_s
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._inflight = False
        self._available = True
        self._store_answers = False
        self._stopped = False
        self._committed_version = 0
        self._committed_step_id: int | None = None
        self._oldest_pending_at: float | None = None
        self._writes = 0
        self._failures = 0
        self._thread = threading.Thread(target=self._loop, name="tempomem-write-behind")
        self._thread.daemon = True
        self._thread.start()

    # ---------------------------------------------------------------------------- interface

    def submit(self, snapshot: Snapshot) -> None:
        with self._cond:
            if self._stopped:
                return
            self._pending = snapshot
            if self._oldest_pending_at is None:
                self._oldest_pending_at = time.monotonic()
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the newest snapshot to be written; False if the store
        failed or the time ran out (the write goes on in the background)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (self._pending is not None or self._inflight) and self._available:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._pending is None and not self._inflight

    def status(self) -> WriterStatus:
        with self._cond:
            return WriterStatus(
                available=self._available,
                store_answers=self._store_answers,
                pending=self._pending is not None or self._inflight,
                committed_version=self._committed_version,
                committed_step_id=self._committed_step_id,
                oldest_pending_at=self._oldest_pending_at,
                writes=self._writes,
                failures=self._failures,
            )

    def mark_unavailable(self) -> None:
        """The session found the store down (e.g. at restore): probe before writing again."""
        with self._cond:
            self._available = False
            self._store_answers = False
            self._cond.notify_all()

    def resume(self) -> None:
        """Write again (the pending snapshot first)."""
        with self._cond:
            self._available = True
            self._store_answers = False
            self._cond.notify_all()

    def set_committed(self, step_id: int | None) -> None:
        """What a restored record says was committed."""
        with self._cond:
            self._committed_step_id = step_id

    def stop(self) -> None:
        """Drop what is pending, write nothing more and end the thread (the session is closed
        or deleted; ``flush()`` first to keep what is pending)."""
        with self._cond:
            self._stopped = True
            self._pending = None
            self._cond.notify_all()

    # ---------------------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while True:
            snapshot = self._next()
            if snapshot is None and self._stopped:
                return
            if snapshot is None:
                if not self._ping():
                    with self._cond:
                        self._cond.wait(self._probe_interval_s)
                continue
            ok = self._write(snapshot)
            with self._cond:
                self._inflight = False
                if ok:
                    self._writes += 1
                    self._committed_version = max(self._committed_version, snapshot.version)
                    if self._committed_version == snapshot.version:
                        self._committed_step_id = snapshot.step_id
                    if self._pending is None:
                        self._oldest_pending_at = None
                else:
                    self._failures += 1
                    self._available = False
                    if self._pending is None and not self._stopped:
                        self._pending = snapshot  # kept for when the store is back
                self._cond.notify_all()

    def _next(self) -> Snapshot | None:
        """The snapshot to write, or None when the store should be probed (outside the lock)."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                if self._available and self._pending is not None:
                    snapshot, self._pending, self._inflight = self._pending, None, True
                    return snapshot
                if not self._available and not self._store_answers:
                    return None
                self._cond.wait()

    def _ping(self) -> bool:
        try:
            self._store.ping()
        except StoreUnavailable:
            return False
        with self._cond:
            self._store_answers = True
            self._cond.notify_all()
        return True

    def _write(self, snapshot: Snapshot) -> bool:
        try:
            tensors: dict[str, torch.Tensor] = {}
            meta = dict(snapshot.meta)
            meta["memory"] = None
            state = self._to_state(snapshot.memory)
            if state is not None:
                state_tensors, meta["memory"] = split_state(state)
                tensors = {MEMORY_PREFIX + k: v for k, v in state_tensors.items()}
            self._store.put_tensors(self._key, tensors, meta=meta, ttl_s=self._ttl_s)
            return True
        except StoreUnavailable as err:
            log.warning("session write to %s failed, store unavailable: %s", self._key, err)
            return False
        except Exception:  # a bug or an oversized record must not kill the writer thread
            log.exception("session write to %s failed", self._key)
            return False
