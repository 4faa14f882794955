"""Drive a frozen policy through an env with one kind of memory: the glue of the evaluation.

A runner turns each observation into a ``Frame`` (``FrozenPolicy.frame``), runs the frozen
model on it with its memory, and picks the highest-scoring choice as the action. Kinds:

- ``none``: the frame alone (the frozen model exactly as it is).
- ``tempofit``: the frame alone, with TempoFit's layer-wise FIFO KV memory of the last
  ``capacity`` frames' prefixes loaded at the configured layers (``t`` = the env step).
- ``stacking``: the last ``k`` frames' prefixes concatenated before the current frame's.
- ``episodic``: every frame's prefix streams into an ``EpisodicLM`` (EM-LLM: surprise-segmented
  events, a small local window, retrieval by similarity and contiguity); a decision feeds the
  suffix and scores each choice by its first token (the stream cannot be branched), so choices
  must differ in their first token.

Every ``act`` returns a ``StepTrace``: action, scores, model latency, and what the memory offered
at that step (``retrieved``: env step -> weight; TempoFit: the retrieval mass per stored frame,
stacking: 1 per frame in the context, episodic: the share of retrieved event tokens per env
step).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from envs.frozen_policy import Frame, FrozenPolicy
from memory import EpisodicConfig, TempoFitConfig
from memory.numbers import is_int

MemoryKind = Literal["none", "tempofit", "episodic", "stacking"]
MEMORY_KINDS: tuple[MemoryKind, ...] = ("none", "tempofit", "episodic", "stacking")


@dataclass
class StepTrace:
    """One env step as the runner saw it."""

    step: int
    action: int
    decided: bool  # the frame had choices (else the default action was taken)
    latency_ms: float  # model time of this step (tracing excluded)
    scores: list[float] | None = None
    frames_in_memory: int = 0
    retrieved: dict[int, float] = field(default_factory=dict)  # env step -> weight


class MemoryRunner(ABC):
    """A frozen policy plus one kind of memory; ``reset()`` at each episode start."""

    kind: MemoryKind

    def __init__(self, policy: FrozenPolicy) -> None:
        if not isinstance(policy, FrozenPolicy):
            raise ValueError(
                f"policy must implement envs.frozen_policy.FrozenPolicy, got {type(policy)!r}"
            )
        self.policy = policy
        self.model = policy.model
        self._step = 0
        self._time_s: float | None = None  # info["t"] of the current step, if stamped

    def reset(self) -> None:
        """Forget everything (a new episode)."""
        self._step = 0
        self._reset_memory()

    @torch.no_grad()
    def act(self, obs: Any, info: dict[str, Any]) -> tuple[int, StepTrace]:
        """The action for ``obs`` and what happened.

        An env wrapped in ``envs.TimestampWrapper`` / ``ElapsedTimeWrapper`` (observation
        ``{"observation": ..., ...}``) works as is: the policy sees the inner observation, and
        ``info["t"]`` is the step's time for a TempoFit whose ``gap_unit`` is "seconds".
        """
        if isinstance(obs, Mapping) and "observation" in obs:
            obs = obs["observation"]
        self._time_s = info.get("t")
        frame = self.policy.frame(obs, info)
        start = time.perf_counter()
        scores, trace = self._run(frame)
        # "excluded_ms": time inside _run that is not the model's (tracing, a service reset)
        latency_ms = (time.perf_counter() - start) * 1e3 - trace.pop("excluded_ms", 0.0)
        action = frame.default_action
        if scores is not None:
            action = max(range(len(scores)), key=scores.__getitem__)
        result = StepTrace(
            step=self._step,
            action=action,
            decided=scores is not None,
            latency_ms=latency_ms,
            scores=scores,
            frames_in_memory=int(trace.get("frames_in_memory", 0)),
            retrieved=trace.get("retrieved", {}),
        )
        self._step += 1
        return action, result

    def close(self) -> None:  # noqa: B027 - runners without hooks have nothing to close
        """Take any hooks off the model (the runner is unusable afterwards)."""

    @abstractmethod
    def _reset_memory(self) -> None: ...

    @abstractmethod
    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        """Run the model on ``frame`` with memory: (choice scores or None, trace fields)."""

    def _forward_and_score(
        self, ids: list[int], choices: list[list[int]] | None
    ) -> list[float] | None:
        from policies.tempofit_engine import forward_and_score

        return forward_and_score(self.model, ids, choices).choice_scores


class NoMemoryRunner(MemoryRunner):
    """The frozen model on the current frame only."""

    kind: MemoryKind = "none"

    def _reset_memory(self) -> None:
        pass

    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        return self._forward_and_score(frame.prefix_ids + frame.suffix_ids, frame.choices), {}


class TempoFitRunner(MemoryRunner):
    """TempoFit on the frozen model: each step's prefix is remembered at the chosen layers.

    ``config`` None: ``policies.default_layers`` of the model and ``capacity`` frames.
    """

    kind: MemoryKind = "tempofit"

    def __init__(
        self, policy: FrozenPolicy, config: TempoFitConfig | None = None, capacity: int = 8
    ) -> None:
        super().__init__(policy)
        from policies.retrieval_trace import FrameRetrievalTrace
        from policies.tempofit_engine import TempoFitEngine, default_config

        if config is None:  # the default early-to-middle layer band of this model
            config = default_config(self.model, capacity=capacity, max_prefix_len=4096)
        self.config = config
        self.engine = TempoFitEngine(self.model, config)
        self.tempofit = self.engine.tempofit
        self.trace = FrameRetrievalTrace(self.tempofit)
        self._steps_at: dict[float, int] = {}  # frame time -> env step

    def _reset_memory(self) -> None:
        self.engine.reset()
        self._steps_at = {}

    def _nearest_step(self, t: float) -> int:
        return self._steps_at[min(self._steps_at, key=lambda known: abs(known - t))]

    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        from policies.tempofit_engine import StepInput

        traced_before = self.trace.elapsed_s
        t = float(self._step)
        if self.config.gap_unit == "seconds":
            if self._time_s is None:
                raise ValueError(
                    "TempoFit with gap_unit='seconds' needs each step's time: wrap the env in "
                    "envs.TimestampWrapper (it puts info['t'])"
                )
            t = float(self._time_s)
        self._steps_at[t] = self._step
        result = self.engine.step(
            StepInput(
                input_ids=frame.prefix_ids + frame.suffix_ids,
                prefix_len=len(frame.prefix_ids),
                t=t,
                choices=frame.choices,
            )
        )
        # Frame times come back through float32 (memory.history); match them to the nearest.
        retrieved = {self._nearest_step(t): mass for t, mass in self.trace.pop().items()}
        traced_ms = (self.trace.elapsed_s - traced_before) * 1e3
        return result.choice_scores, {
            "frames_in_memory": result.frames_in_memory,
            "retrieved": retrieved,
            "excluded_ms": traced_ms,
        }

    def close(self) -> None:
        self.trace.detach()
        self.engine.remove()


class StackingRunner(MemoryRunner):
    """Frame stacking: the last ``k`` prefixes, oldest first, before the current frame."""

    kind: MemoryKind = "stacking"

    def __init__(self, policy: FrozenPolicy, k: int = 4) -> None:
        super().__init__(policy)
        if not is_int(k) or k < 1:
            raise ValueError(f"k (frames stacked) must be an int >= 1, got {k!r}")
        self.k = k
        self._history: deque[tuple[int, list[int]]] = deque(maxlen=k)

    def _reset_memory(self) -> None:
        self._history.clear()

    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        past = [token for _, prefix in self._history for token in prefix]
        scores = self._forward_and_score(past + frame.prefix_ids + frame.suffix_ids, frame.choices)
        retrieved = {step: 1.0 for step, _ in self._history}
        frames = len(self._history)
        self._history.append((self._step, list(frame.prefix_ids)))
        return scores, {"frames_in_memory": frames, "retrieved": retrieved}


class EpisodicRunner(MemoryRunner):
    """EM-LLM episodic memory over the stream of frame prefixes (see the module docstring).

    ``config``: an ``EpisodicConfig``; the default is sized for short episodes (a 32-token
    local window, events of 4-32 tokens, 64 retrieved tokens), so memory, not the window,
    carries what happened more than a couple of frames ago.
    """

    kind: MemoryKind = "episodic"

    def __init__(self, policy: FrozenPolicy, config: EpisodicConfig | None = None) -> None:
        super().__init__(policy)
        from policies import EpisodicLM

        self.config = config or EpisodicConfig(
            n_init=4,
            n_local=32,
            budget=64,
            chunk_size=16,
            surprise_window=16,
            min_event_size=4,
            max_event_size=32,
        )
        self.lm = EpisodicLM(self.model, self.config)
        self._spans: list[tuple[int, int, int]] = []  # (env step, first token, end token)
        self._fed = 0

    def _reset_memory(self) -> None:
        self.lm.reset()
        self._spans = []
        self._fed = 0

    def _feed(self, ids: list[int]) -> torch.Tensor:
        logits = self.lm.feed(torch.tensor([ids], dtype=torch.long))
        self._fed += len(ids)
        return logits

    def _run(self, frame: Frame) -> tuple[list[float] | None, dict[str, Any]]:
        retrievals_before = len(self.lm.retrievals)
        self._spans.append((self._step, self._fed, self._fed + len(frame.prefix_ids)))
        logits = self._feed(frame.prefix_ids)
        scores = None
        if frame.choices is not None:
            if frame.suffix_ids:
                logits = self._feed(frame.suffix_ids)
            firsts = [choice[0] for choice in frame.choices]
            if len(set(firsts)) != len(firsts):
                raise ValueError(
                    "the episodic runner scores choices by their first token; these choices "
                    f"share first tokens: {frame.choices}"
                )
            logp = torch.log_softmax(logits.float(), dim=-1)
            scores = [float(logp[token]) for token in firsts]
        retrieved = self._retrieved_steps(self.lm.retrievals[retrievals_before:])
        return scores, {"frames_in_memory": len(self.lm.events()), "retrieved": retrieved}

    def _retrieved_steps(self, records: list[Any]) -> dict[int, float]:
        """Share of the retrieved events' tokens that came from each env step."""
        events = {event_id: (start, end) for event_id, start, end in self.lm.events()}
        counts: dict[int, float] = {}
        for record in records:
            for ids in record.events.values():
                for event_id in ids:
                    start, end = events.get(event_id, (0, 0))
                    for step, first, stop in self._spans:
                        overlap = min(end, stop) - max(start, first)
                        if overlap > 0:
                            counts[step] = counts.get(step, 0.0) + overlap
        total = sum(counts.values())
        return {step: n / total for step, n in sorted(counts.items())} if total else {}

    def close(self) -> None:
        self.lm.remove()


def make_runner(kind: str, policy: FrozenPolicy, **options: Any) -> MemoryRunner:
    """A runner of ``kind`` (one of ``MEMORY_KINDS``); ``options`` go to its constructor
    (``config`` for tempofit/episodic, ``k`` for stacking)."""
    runners: dict[str, type[MemoryRunner]] = {
        "none": NoMemoryRunner,
        "tempofit": TempoFitRunner,
        "episodic": EpisodicRunner,
        "stacking": StackingRunner,
    }
    if kind not in runners:
        raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {kind!r}")
    return runners[kind](policy, **options)
