"""The evaluation harness: episodes of a task, one frozen policy, several kinds of memory.

``evaluate`` runs the SAME seeded episodes for every memory kind (a paired comparison), records
every step (``StepTrace``) and summarises success with a 95 % Wilson interval and the step
latencies. ``EvalReport`` is plain data: ``to_json()`` / ``from_json()`` round-trip it, and
``envs.eval_plots`` draws it.

Success is the task's own verdict (``info["correct"]`` at the graded step; else reward > 0).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym

from envs.frozen_policy import FrozenPolicy
from envs.memory_runners import MEMORY_KINDS, MemoryRunner, StepTrace, make_runner

#: called after each episode with (memory kind, episodes done of that kind, total of that kind)
ProgressCallback = Callable[[str, int, int], None]
MAX_EPISODES = 100_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval of a success rate; (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeResult:
    memory: str
    episode: int
    seed: int
    success: bool
    reward: float
    steps: list[StepTrace]


@dataclass
class MemorySummary:
    memory: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    latency_p50_ms: float
    latency_p99_ms: float
    decision_latency_p50_ms: float  # steps that scored choices
    wall_s: float


@dataclass
class EvalReport:
    env_id: str
    env_kwargs: dict[str, Any]
    policy: str
    seed: int
    summaries: list[MemorySummary]
    episodes: list[EpisodeResult] = field(default_factory=list)

    def summary(self, memory: str) -> MemorySummary:
        for item in self.summaries:
            if item.memory == memory:
                return item
        raise KeyError(
            f"no memory {memory!r} in this report ({[s.memory for s in self.summaries]})"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> EvalReport:
        raw = json.loads(text)
        episodes = [
            EpisodeResult(
                **{
                    **e,
                    "steps": [
                        StepTrace(
                            **{**s, "retrieved": {int(k): v for k, v in s["retrieved"].items()}}
                        )
                        for s in e["steps"]
                    ],
                }
            )
            for e in raw.pop("episodes")
        ]
        summaries = [MemorySummary(**s) for s in raw.pop("summaries")]
        return cls(**raw, summaries=summaries, episodes=episodes)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_episode(
    runner: MemoryRunner, env: gym.Env[Any, Any], seed: int, episode: int
) -> EpisodeResult:
    """One seeded episode of ``env`` driven by ``runner``."""
    runner.reset()
    obs, info = env.reset(seed=seed)
    steps: list[StepTrace] = []
    reward_total, success = 0.0, False
    while True:
        action, trace = runner.act(obs, info)
        steps.append(trace)
        obs, reward, terminated, truncated, info = env.step(action)
        reward_total += float(reward)
        if terminated or truncated:
            success = bool(info.get("correct", reward_total > 0))
            break
    return EpisodeResult(runner.kind, episode, seed, success, reward_total, steps)


def _summarise(memory: str, results: list[EpisodeResult], wall_s: float) -> MemorySummary:
    successes = sum(r.success for r in results)
    latencies = [s.latency_ms for r in results for s in r.steps]
    decisions = [s.latency_ms for r in results for s in r.steps if s.decided]
    low, high = wilson_interval(successes, len(results))
    return MemorySummary(
        memory=memory,
        episodes=len(results),
        successes=successes,
        success_rate=successes / max(1, len(results)),
        ci_low=low,
        ci_high=high,
        latency_p50_ms=_percentile(latencies, 0.5),
        latency_p99_ms=_percentile(latencies, 0.99),
        decision_latency_p50_ms=statistics.median(decisions) if decisions else float("nan"),
        wall_s=wall_s,
    )


def evaluate(
    env_id: str,
    policy: FrozenPolicy,
    memories: Sequence[str] = MEMORY_KINDS,
    *,
    episodes: int = 20,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    runner_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: ProgressCallback | None = None,
) -> EvalReport:
    """Run ``episodes`` seeded episodes (seeds ``seed .. seed + episodes - 1``) per memory kind.

    Args:
        env_id: a registered gymnasium id (``import envs`` registers the ``tempomem/`` ones).
        policy: the frozen policy (shared by all runners; each runner wraps it in turn and
            takes its hooks off again before the next).
        memories: kinds from ``MEMORY_KINDS``, each at most once.
        env_kwargs: passed to ``gymnasium.make``.
        runner_options: per kind, constructor options (e.g. ``{"stacking": {"k": 2}}``).
        progress: called after every episode.
    """
    import envs  # noqa: F401  (registers the tempomem/ ids)

    if (
        isinstance(episodes, bool)
        or not isinstance(episodes, int)
        or not 1 <= episodes <= MAX_EPISODES
    ):
        raise ValueError(f"episodes must be an int in [1, {MAX_EPISODES}], got {episodes!r}")
    unknown = [m for m in memories if m not in MEMORY_KINDS]
    if unknown or len(set(memories)) != len(memories) or not memories:
        raise ValueError(
            f"memories must be distinct kinds from {MEMORY_KINDS}, got {list(memories)}"
        )
    options = dict(runner_options or {})
    env = gym.make(env_id, **dict(env_kwargs or {}))
    all_results: list[EpisodeResult] = []
    summaries: list[MemorySummary] = []
    try:
        for memory in memories:
            runner = make_runner(memory, policy, **dict(options.get(memory, {})))
            start = time.perf_counter()
            results = []
            try:
                for i in range(episodes):
                    results.append(run_episode(runner, env, seed + i, i))
                    if progress is not None:
                        progress(memory, i + 1, episodes)
            finally:
                runner.close()
            summaries.append(_summarise(memory, results, time.perf_counter() - start))
            all_results.extend(results)
    finally:
        env.close()
    return EvalReport(
        env_id=env_id,
        env_kwargs=dict(env_kwargs or {}),
        policy=policy.name,
        seed=seed,
        summaries=summaries,
        episodes=all_results,
    )
