"""How often a tool's result changes, learned online from re-calls with the same arguments.

Each re-call of a tool with the same arguments, `dt` seconds after the previous one, tells
whether the result changed within `dt`. Read as a Poisson process of changes (interval-
censored: a change counts one event and half the interval as exposure, no change the whole
interval), the evidence per tool and per (tool, arguments) is `changes`, `exposure_s` and
`observations`, plain numbers (`state_dict` / `load_state_dict`).

Prior: a mixture of Gamma priors over the rate (changes per second), one at the horizon the
tool was given without evidence (declared, described or inferred) and one at each volatility
class, each small class keeping `class_floor` of the weight so that evidence can overturn a
wrong prior. A component with horizon h has shape `prior_strength` and rate chosen so that its
predictive probability of a change within h is `stale_probability`. The posterior is again a
Gamma mixture (weights times the negative-binomial marginal likelihood); the learned horizon is
the age at which its predictive probability of a change reaches `stale_probability`. Evidence
for the same arguments counts fully, the tool's other arguments at `other_arguments_weight`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memory.temporal.chat import Chat
from memory.temporal.horizons import CLASS_HORIZON_S, wordset
from memory.temporal.results import ResultStatus, parse_json, result_status

VOLATILE_KEYS = wordset(
    """timestamp ts time as_of asof updated_at last_updated fetched_at retrieved_at generated_at
    server_time request_id trace_id _meta meta headers latency_ms took_ms elapsed_ms
    cache_control expires expires_at ttl ttl_s max_age valid_until"""
)
STATE_VERSION = 1


@dataclass(frozen=True)
class Evidence:
    """Sufficient statistics of observed change intervals."""

    changes: float = 0.0
    exposure_s: float = 0.0
    observations: float = 0.0

    def plus(self, other: Evidence, weight: float = 1.0) -> Evidence:
        return Evidence(
            self.changes + weight * other.changes,
            self.exposure_s + weight * other.exposure_s,
            self.observations + weight * other.observations,
        )

    @staticmethod
    def of(interval_s: float, changed: bool) -> Evidence:
        return Evidence(1.0, interval_s / 2, 1.0) if changed else Evidence(0.0, interval_s, 1.0)


@dataclass(frozen=True)
class Interval:
    """One re-call: the tool, its arguments' key, the time between the calls, and whether the
    result changed; `end` is the time of the later result."""

    tool: str
    arguments_key: str
    interval_s: float
    changed: bool
    end: float


def arguments_key(arguments: Mapping[str, Any]) -> str:
    """Canonical JSON of a call's arguments (the per-argument key)."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(text: str) -> str:
    """A digest of a result without its volatile metadata (timestamps, request ids, TTLs)."""
    value = parse_json(text)
    if value is not None:
        text = json.dumps(_stable(value, 0), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.strip().encode(), digest_size=12).hexdigest()


def _stable(value: Any, depth: int) -> Any:
    if isinstance(value, Mapping) and depth < 3:
        return {
            k: _stable(v, depth + 1)
            for k, v in value.items()
            if str(k).lower().replace("-", "_") not in VOLATILE_KEYS
        }
    if isinstance(value, list) and depth < 3:
        return [_stable(v, depth + 1) for v in value]
    return value


def chat_intervals(chat: Chat) -> list[Interval]:
    """Every re-call in `chat` of a tool with the same arguments, failed results skipped."""
    found: list[Interval] = []
    for tool, results in chat.all_results().items():
        if len(results) < 2:
            continue
        previous: dict[str, tuple[float, str]] = {}
        for result in results:
            t = chat.times[result.index]
            if t is None or result_status(result.text, result.flagged_error) is not ResultStatus.OK:
                continue
            key = arguments_key(result.arguments)
            digest = fingerprint(result.text)
            before = previous.get(key)
            if before is not None and t > before[0]:
                found.append(Interval(tool, key, t - before[0], digest != before[1], t))
            previous[key] = (t, digest)
    return found


class ChangeRateModel:
    """Per-tool and per-call change-rate evidence and the horizons it implies."""

    def __init__(
        self,
        stale_probability: float = 0.5,
        prior_strength: float = 2.0,
        class_floor: float = 0.01,
        other_arguments_weight: float = 0.5,
        max_keys: int = 4096,
    ) -> None:
        if not 0.0 < stale_probability < 1.0:
            raise ValueError(f"stale_probability must be in (0, 1), got {stale_probability}")
        if prior_strength <= 0 or not 0.0 <= class_floor < 0.2:
            raise ValueError("prior_strength must be > 0 and class_floor in [0, 0.2)")
        self.stale_probability = stale_probability
        self.prior_strength = prior_strength
        self.class_floor = class_floor
        self.other_arguments_weight = other_arguments_weight
        self.max_keys = max_keys
        self._tools: dict[str, Evidence] = {}
        self._calls: dict[tuple[str, str], Evidence] = {}
        self._last_end: dict[tuple[str, str], float] = {}
        # Bumped by every recorded interval and every load: a persister saves when it moved.
        self.revision = 0

    # ---------------------------------------------------------------- evidence

    def record(self, interval: Interval) -> bool:
        """Add one interval unless it ends no later than the last one recorded for its call
        (so re-reading a growing conversation counts each re-call once)."""
        key = (interval.tool, interval.arguments_key)
        if interval.end <= self._last_end.get(key, -math.inf) or interval.interval_s <= 0:
            return False
        if key not in self._calls and len(self._calls) >= self.max_keys:
            oldest = next(iter(self._calls))
            self._calls.pop(oldest)
            self._last_end.pop(oldest, None)
        observed = Evidence.of(interval.interval_s, interval.changed)
        self._calls[key] = self._calls.get(key, Evidence()).plus(observed)
        self._tools[interval.tool] = self._tools.get(interval.tool, Evidence()).plus(observed)
        self._last_end[key] = interval.end
        self.revision += 1
        return True

    def knows(self, tool: str) -> bool:
        """Whether any evidence about `tool` has been recorded."""
        return tool in self._tools

    def record_all(self, intervals: Iterable[Interval]) -> int:
        return sum(self.record(interval) for interval in intervals)

    def evidence(
        self, tool: str, arguments: str | None = None, extra: Iterable[Interval] = ()
    ) -> Evidence:
        """Evidence for a call of `tool` with `arguments` (a key): that call's own in full, the
        tool's other calls at `other_arguments_weight`; `extra` intervals (not recorded) too."""
        own = self._calls.get((tool, arguments), Evidence()) if arguments is not None else None
        tool_total = self._tools.get(tool, Evidence())
        for interval in extra:
            if interval.tool != tool:
                continue
            observed = Evidence.of(interval.interval_s, interval.changed)
            tool_total = tool_total.plus(observed)
            if own is not None and interval.arguments_key == arguments:
                own = own.plus(observed)
        if own is None:
            return tool_total
        others = tool_total.plus(own, -1.0)
        return own.plus(others, self.other_arguments_weight)

    # ---------------------------------------------------------------- posterior

    def _components(self, prior_horizon_s: float) -> list[tuple[float, float]]:
        """(weight, Gamma rate) of each prior component, shape `prior_strength`."""
        horizons = [prior_horizon_s, *CLASS_HORIZON_S.values()]
        main = 1.0 - self.class_floor * len(CLASS_HORIZON_S)
        weights = [main, *([self.class_floor] * len(CLASS_HORIZON_S))]
        scale = (1.0 - self.stale_probability) ** (-1.0 / self.prior_strength) - 1.0
        return [(w, max(h, 1e-3) / scale) for w, h in zip(weights, horizons, strict=True)]

    def _posterior(
        self, evidence: Evidence, prior_horizon_s: float
    ) -> tuple[float, list[tuple[float, float]]]:
        """(shape, [(weight, rate)]) of the posterior mixture."""
        alpha = self.prior_strength
        shape = alpha + evidence.changes
        logs = []
        for weight, beta in self._components(prior_horizon_s):
            log_like = alpha * math.log(beta) - shape * math.log(beta + evidence.exposure_s)
            logs.append((math.log(weight) + log_like if weight > 0 else -math.inf, beta))
        top = max(log for log, _ in logs)
        total = sum(math.exp(log - top) for log, _ in logs)
        return shape, [
            (math.exp(log - top) / total, beta + evidence.exposure_s) for log, beta in logs
        ]

    def rate(self, evidence: Evidence, prior_horizon_s: float) -> float:
        """Posterior mean changes per second."""
        shape, mixture = self._posterior(evidence, prior_horizon_s)
        return sum(weight * shape / beta for weight, beta in mixture)

    def horizon(self, evidence: Evidence, prior_horizon_s: float) -> float:
        """The age at which the posterior predictive probability of a change reaches
        `stale_probability`."""
        shape, mixture = self._posterior(evidence, prior_horizon_s)
        target = 1.0 - self.stale_probability

        def survival(t: float) -> float:
            return sum(w * math.exp(-shape * math.log1p(t / beta)) for w, beta in mixture)

        low, high = math.log(1e-2), math.log(1e11)
        for _ in range(60):
            middle = 0.5 * (low + high)
            if survival(math.exp(middle)) > target:
                low = middle
            else:
                high = middle
        return math.exp(0.5 * (low + high))

    # ---------------------------------------------------------------- persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: the evidence per tool and per call, and each call's last re-call time."""
        calls: dict[str, dict[str, list[float]]] = {}
        for (tool, key), evidence in self._calls.items():
            row = [evidence.changes, evidence.exposure_s, evidence.observations]
            calls.setdefault(tool, {})[key] = [*row, self._last_end.get((tool, key), 0.0)]
        return {
            "version": STATE_VERSION,
            "tools": {
                tool: [e.changes, e.exposure_s, e.observations] for tool, e in self._tools.items()
            },
            "calls": calls,
        }

    def load_state_dict(self, state: Any) -> None:
        """Replace the evidence with a `state_dict()`'s (ValueError naming what is wrong)."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"change-rate state must be a dict with version {STATE_VERSION}")
        tools: dict[str, Evidence] = {}
        calls: dict[tuple[str, str], Evidence] = {}
        last: dict[tuple[str, str], float] = {}
        for tool, row in dict(state.get("tools") or {}).items():
            tools[str(tool)] = Evidence(*_numbers(row, 3, f"tools[{tool!r}]"))
        for tool, rows in dict(state.get("calls") or {}).items():
            for key, row in dict(rows).items():
                changes, exposure, count, end = _numbers(row, 4, f"calls[{tool!r}][{key!r}]")
                calls[(str(tool), str(key))] = Evidence(changes, exposure, count)
                last[(str(tool), str(key))] = end
        self._tools, self._calls, self._last_end = tools, calls, last
        self.revision += 1


def _numbers(row: Any, count: int, where: str) -> list[float]:
    if not isinstance(row, list | tuple) or len(row) != count:
        raise ValueError(f"change-rate state {where}: expected {count} numbers, got {row!r}")
    values = []
    for value in row:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"change-rate state {where}: {value!r} is not a finite number")
        if value < 0:
            raise ValueError(f"change-rate state {where}: {value!r} is negative")
        values.append(float(value))
    return values
