"""A memory runner whose frozen model sits behind the service: each env step is a session step.

``ServiceRunner`` plugs a ``TempomemClient`` session into ``envs.memory_runners.MemoryRunner``,
so ``envs.evaluation.run_episode`` drives it like the in-process runners. With ``memory=True``
the session's TempoFit memory (in its session actor and store) carries the episode; with
``memory=False`` the session is reset before every step, so each step sees the frozen model
alone. The policy only encodes observations here (``policy.frame``); the service's worker runs
the model.
"""

from __future__ import annotations

import time
from typing import Any

from envs.frozen_policy import Frame, FrozenPolicy
from envs.memory_runners import MemoryKind, MemoryRunner


class ServiceRunner(MemoryRunner):
    """Steps ``session`` of ``client`` (a ``TempomemClient``), with or without its memory."""

    def __init__(self, policy: FrozenPolicy, client: Any, session: str, memory: bool) -> None:
        super().__init__(policy)
        self.client = client
        self.session = session
        self.memory = memory
        self.kind: MemoryKind = "tempofit" if memory else "none"
        self._step_id = 0

    def _reset_memory(self) -> None:
        self.client.reset(self.session)
        self._step_id = 0

    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        reset_ms = 0.0
        if not self.memory and self._step_id:
            start = time.perf_counter()
            self._reset_memory()  # empty memory: the frozen model alone
            reset_ms = (time.perf_counter() - start) * 1e3
        answer = self.client.step(
            self.session,
            self._step_id,
            frame.prefix_ids + frame.suffix_ids,
            prefix_len=len(frame.prefix_ids),
            choices=frame.choices,
        )
        self._step_id += 1
        scores = answer.choice_scores if frame.choices is not None else None
        return scores, {"frames_in_memory": answer.frames_in_memory, "excluded_ms": reset_ms}
