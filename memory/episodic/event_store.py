"""Where events live: CPU memory (bounded), an LRU of hot events on the model's device, and
optionally a shared backing store so that events outlive the process.

Defaults: at most 4096 events and 1 GiB in CPU memory (SmolLM2-135M keeps 30 layers x 2 x 3
heads x 64 dims = 11,520 values per token: ~45k tokens in bf16, ~23k in fp32), 64 hot events.
When a bound is exceeded the oldest events (insertion order) leave CPU memory and the hot LRU;
with a backing store they stay readable through ``get``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from memory.episodic.checks import check_int
from memory.episodic.events import Event
from memory.episodic.retrieval import pack_representatives
from memory.numbers import is_int

STATE_FORMAT = "tempomem.episodic.event_store/1"
RECORD_FORMAT = "tempomem.episodic.event/1"
DEFAULT_MAX_EVENTS = 4096
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_CACHE_EVENTS = 64
_TENSOR, _REPR = "t.", "r."


@runtime_checkable
class TensorBacking(Protocol):
    """What ``EventStore`` needs of a shared store (``kv_store.LocalStore``/``RedisStore`` fit)."""

    def put_tensors(
        self,
        key: str,
        tensors: Mapping[str, Tensor],
        meta: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
    ) -> None: ...

    def get_tensors(self, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None: ...


class EventStore:
    """Events by id: CPU memory (FIFO-bounded) + hot LRU on ``cache_device`` + optional backing.

    - ``add(event)``: keeps a CPU copy; writes it through to ``backing`` under
      ``"{namespace}/event/{id}"`` (with ``ttl_s``) when there is one.
    - ``get(event_id)``: the event on ``cache_device``, from the hot LRU, else CPU memory, else
      the backing store; None if unknown. Fetched events enter the LRU (``cache_events`` of
      them; 0 disables it). On a CPU ``cache_device`` the LRU holds no extra copies of events
      still in CPU memory. Returned events share storage with the store: treat them as
      read-only.
    """

    def __init__(
        self,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cache_events: int = DEFAULT_CACHE_EVENTS,
        cache_device: torch.device | str = "cpu",
        backing: TensorBacking | None = None,
        namespace: str = "episodic",
        ttl_s: float | None = None,
    ) -> None:
        for name, value, lowest in (
            ("max_events", max_events, 1),
            ("max_bytes", max_bytes, 1),
            ("cache_events", cache_events, 0),
        ):
            check_int(name, value, lowest)
        if backing is not None and not isinstance(backing, TensorBacking):
            raise ValueError("backing must implement put_tensors(...) and get_tensors(key)")
        if not namespace or any(c.isspace() for c in namespace):
            raise ValueError(f"namespace must be a non-empty string without spaces: {namespace!r}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.cache_events = cache_events
        self.cache_device = torch.device(cache_device)
        self.backing = backing
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.cache_hits = 0
        self.cache_misses = 0
        self._events: OrderedDict[int, Event] = OrderedDict()
        # pack_representatives() of one representatives name, kept until the events change.
        self._packed: dict[str, tuple[list[int], Tensor, Tensor]] = {}
        self._hot: OrderedDict[int, Event] = OrderedDict()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._events

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._events.values()))

    @property
    def nbytes(self) -> int:
        """Bytes of the events in CPU memory (the hot LRU not counted)."""
        return self._nbytes

    def ids(self) -> list[int]:
        """Ids of the events in CPU memory, oldest first."""
        return list(self._events)

    def add(self, event: Event) -> None:
        """Keep ``event`` (tensors copied to CPU); evict the oldest events beyond the bounds."""
        if not isinstance(event, Event):
            raise ValueError(f"expected an Event, got {type(event).__name__}")
        if event.event_id in self._events:
            raise ValueError(f"event {event.event_id} is already stored")
        if event.nbytes > self.max_bytes:
            raise ValueError(
                f"event {event.event_id} has {event.nbytes} bytes, more than max_bytes="
                f"{self.max_bytes}"
            )
        stored = _on_cpu(event)
        if self.backing is not None:
            tensors, meta = _to_record(stored)
            self.backing.put_tensors(self._key(stored.event_id), tensors, meta, self.ttl_s)
        self._hot.pop(stored.event_id, None)
        self._insert(stored)

    def get(self, event_id: int) -> Event | None:
        """The event on ``cache_device`` (see the class docstring), or None if unknown."""
        hot = self._hot.get(event_id)
        if hot is not None:
            self._hot.move_to_end(event_id)
            self.cache_hits += 1
            return hot
        self.cache_misses += 1
        event = self._events.get(event_id)
        if event is None and self.backing is not None:
            record = self.backing.get_tensors(self._key(event_id))
            event = _from_record(record, event_id) if record is not None else None
        if event is None:
            return None
        hot = event.to(self.cache_device)
        if self.cache_events > 0:
            self._hot[event_id] = hot
            while len(self._hot) > self.cache_events:
                self._hot.popitem(last=False)
        return hot

    def representatives(self, name: str) -> dict[int, Tensor]:
        """Event id -> representatives[name] (H, R, D) of every event in CPU memory that has it."""
        return {
            event_id: event.representatives[name]
            for event_id, event in self._events.items()
            if name in event.representatives
        }

    def packed_representatives(self, name: str) -> tuple[list[int], Tensor, Tensor] | None:
        """``pack_representatives(self.representatives(name))``: (ids, (E, H, R, D), (E, R)),
        or None without any; computed once per change of the stored events."""
        if name not in self._packed:
            candidates = self.representatives(name)
            if not candidates:
                return None
            self._packed[name] = pack_representatives(candidates)
        return self._packed[name]

    def sizes(self) -> dict[int, int]:
        """Event id -> tokens, for the events in CPU memory."""
        return {event_id: event.num_tokens for event_id, event in self._events.items()}

    def clear(self) -> None:
        """Forget every event in memory (the backing store is left as it is)."""
        self._events.clear()
        self._packed.clear()
        self._hot.clear()
        self._nbytes = 0

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain JSON values (never pickle) of the events in CPU memory.

        Keys: ``format``, ``events`` (a list of ``{"event_id", "start", "end", "tensors",
        "representatives"}``, oldest first, the last two listing names) and one tensor per
        ``event.{id}.t.{name}`` / ``event.{id}.r.{name}``. ``kv_store.save_state`` stores it.
        """
        state: dict[str, Any] = {"format": STATE_FORMAT, "events": []}
        for event in self._events.values():
            state["events"].append(_describe(event))
            for name, tensor in event.tensors.items():
                state[f"event.{event.event_id}.{_TENSOR}{name}"] = tensor
            for name, tensor in event.representatives.items():
                state[f"event.{event.event_id}.{_REPR}{name}"] = tensor
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the events in memory with those of ``state``; ValueError (store unchanged)
        on a malformed state. The bounds apply: the oldest events beyond them are dropped."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state must be a mapping with format {STATE_FORMAT!r}")
        records = state.get("events")
        if not isinstance(records, list):
            raise ValueError("state['events'] must be a list")
        events = []
        used = {"format", "events"}
        for record in records:
            prefix = f"event.{record.get('event_id') if isinstance(record, dict) else '?'}."
            event = _event_from(record, state, prefix, f"state event {record!r}")
            used.update(prefix + _TENSOR + n for n in event.tensors)
            used.update(prefix + _REPR + n for n in event.representatives)
            events.append(event)
        extra = sorted(set(state) - used)
        if extra:
            raise ValueError(f"state has unexpected entries {extra[:5]}")
        if len({e.event_id for e in events}) != len(events):
            raise ValueError("state lists an event id twice")
        self.clear()
        for event in events:
            self._insert(_on_cpu(event))

    def _insert(self, event: Event) -> None:
        self._packed.clear()
        self._events[event.event_id] = event
        self._nbytes += event.nbytes
        while len(self._events) > self.max_events or self._nbytes > self.max_bytes:
            _, oldest = self._events.popitem(last=False)
            self._nbytes -= oldest.nbytes
            self._hot.pop(oldest.event_id, None)

    def _key(self, event_id: int) -> str:
        return f"{self.namespace}/event/{int(event_id)}"


def _on_cpu(event: Event) -> Event:
    """A CPU copy of ``event`` that shares no storage with the caller's tensors."""
    return Event(
        event.event_id,
        event.start,
        event.end,
        {k: v.detach().to("cpu", copy=True).contiguous() for k, v in event.tensors.items()},
        {k: v.detach().to("cpu", copy=True).contiguous() for k, v in event.representatives.items()},
    )


def _describe(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "start": event.start,
        "end": event.end,
        "tensors": list(event.tensors),
        "representatives": list(event.representatives),
    }


def _to_record(event: Event) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """One backing-store record: tensors under ``t.{name}`` / ``r.{name}``, spans as meta."""
    tensors = {_TENSOR + k: v for k, v in event.tensors.items()}
    tensors.update({_REPR + k: v for k, v in event.representatives.items()})
    return tensors, {"format": RECORD_FORMAT, **_describe(event)}


def _from_record(record: tuple[dict[str, Tensor], dict[str, Any]], event_id: int) -> Event:
    tensors, meta = record
    if not isinstance(meta, dict) or meta.get("format") != RECORD_FORMAT:
        raise ValueError(f"backing record of event {event_id} was not written by EventStore")
    if meta.get("event_id") != event_id:
        raise ValueError(f"backing record of event {event_id} holds event {meta.get('event_id')}")
    return _event_from(meta, tensors, "", f"backing record of event {event_id}")


def _event_from(record: object, tensors: Mapping[str, Any], prefix: str, where: str) -> Event:
    """Rebuild an Event from its description and a mapping holding its tensors."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: event description must be a dict")
    names: dict[str, list[str]] = {}
    for kind in ("tensors", "representatives"):
        listed = record.get(kind)
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ValueError(f"{where}: '{kind}' must be a list of names")
        names[kind] = listed
    span: list[int] = []
    for key in ("event_id", "start", "end"):
        value = record.get(key)
        if not is_int(value):
            raise ValueError(f"{where}: {key} must be an int, got {value!r}")
        span.append(value)
    found: dict[str, dict[str, Tensor]] = {"tensors": {}, "representatives": {}}
    for kind, tag in (("tensors", _TENSOR), ("representatives", _REPR)):
        for name in names[kind]:
            tensor = tensors.get(prefix + tag + name)
            if not isinstance(tensor, Tensor):
                raise ValueError(f"{where}: tensor {prefix + tag + name!r} is missing")
            found[kind][name] = tensor
    try:
        return Event(span[0], span[1], span[2], found["tensors"], found["representatives"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
