"""``EpisodeRecord``: what a session knows of its current episode, besides the memory itself.

One dataclass instead of fields set in three places: a session starts with one, a reset
replaces it with ``next_episode()``, a step updates it with ``applied()`` and ``remember()``,
and the store keeps it as JSON (``to_meta`` / ``from_meta``) beside the memory's tensors.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EpisodeRecord:
    number: int = 0  # episodes begun (1 after the first reset)
    frames: int = 0  # frames in the memory
    last_step_id: int | None = None
    last_t: float | None = None  # the last applied step's frame time
    last_step_wall: float | None = None  # host wall clock of the last step
    reset_wall: float = field(default_factory=time.time)
    responses: OrderedDict[int, dict[str, Any]] = field(default_factory=OrderedDict)
    digests: dict[int, str] = field(default_factory=dict)  # step id -> request digest

    def next_episode(self) -> EpisodeRecord:
        """An empty record for the episode after this one."""
        return EpisodeRecord(number=self.number + 1)

    def applied(self, step_id: int, t: float | None, digest: str) -> None:
        """A step was answered (with or without memory)."""
        self.last_step_id = step_id
        self.last_t = t if t is not None else self.last_t
        self.digests[step_id] = digest
        self.last_step_wall = time.time()

    def remember(self, step_id: int, response: dict[str, Any], window: int) -> None:
        """Keep ``response`` for replays of ``step_id``; at most ``window`` are kept."""
        self.responses[step_id] = response
        self.trim(window)

    def trim(self, window: int) -> None:
        while len(self.responses) > window:
            self.responses.popitem(last=False)
        for step_id in [i for i in self.digests if i not in self.responses]:
            del self.digests[step_id]

    def merged_with_answers_of(self, live: EpisodeRecord, window: int) -> EpisodeRecord:
        """This (stored) record plus what ``live`` answered while the store was away."""
        ids = [i for i in (self.last_step_id, live.last_step_id) if i is not None]
        times = [t for t in (self.last_t, live.last_t) if t is not None]
        merged = EpisodeRecord(
            number=self.number,
            frames=self.frames,
            last_step_id=max(ids) if ids else None,
            last_t=max(times) if times else None,
            last_step_wall=self.last_step_wall or live.last_step_wall,
            reset_wall=self.reset_wall,
            responses=OrderedDict(sorted([*self.responses.items(), *live.responses.items()])),
            digests={**self.digests, **live.digests},
        )
        merged.trim(window)
        return merged

    def to_meta(self) -> dict[str, Any]:
        return {
            "episode": self.number,
            "last_step_id": self.last_step_id,
            "frames": self.frames,
            "last_step_wall": self.last_step_wall,
            "reset_wall": self.reset_wall,
            "last_t": self.last_t,
            "responses": {str(k): v for k, v in self.responses.items()},
            "digests": {str(k): v for k, v in self.digests.items()},
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], reset_wall: float) -> EpisodeRecord:
        """The record in a session record's metadata (older records lack some fields)."""
        last = meta.get("last_step_id")
        last_t = meta.get("last_t")
        return cls(
            number=int(meta.get("episode", 0)),
            frames=int(meta.get("frames", 0)),
            last_step_id=None if last is None else int(last),
            last_t=None if last_t is None else float(last_t),
            last_step_wall=meta.get("last_step_wall"),
            reset_wall=float(meta.get("reset_wall", reset_wall)),
            responses=OrderedDict(
                sorted((int(k), v) for k, v in (meta.get("responses") or {}).items())
            ),
            digests={int(k): str(v) for k, v in (meta.get("digests") or {}).items()},
        )
