"""Freshness of MCP tool results: which calls may be answered from an earlier result, and the
`_meta["tempomem/freshness"]` every result of the proxy carries.

Plain JSON in and out (MCP tool and result dicts as they travel, camelCase keys), no MCP SDK:
`services.mcp_proxy` feeds it upstream answers, the benchmark replays recorded conversations.

A call is answered from the cache when all of these hold:

1. the tool is read-only: `classify_tool` (MCP annotations first: `readOnlyHint`,
   `destructiveHint`; then the lookup or action verb of its name or description) says "read",
   and not merely by default (a tool nothing tells about is never cached);
2. an earlier result of the same tool with the same arguments (canonical JSON) is cached;
3. its age is within the horizon: `--horizon TOOL=SECONDS` if given (0: never cache that
   tool), else the freshness the result declared (`Cache-Control`, `ttl`, `expires_at` in its
   JSON or `_meta`, see `memory.temporal.results`), else the advisor's horizon for the tool
   (declared `x-horizon-s`, described cadence, or inferred volatility class).

Only successful results are cached: not `isError` results, nor ones whose text reads as a
failure or is empty (`memory.temporal.results.result_status`), nor results over
`max_result_chars` of JSON. The cache is in-process and bounded (`max_entries`, least recently
used out first); a stale entry is dropped when it is next looked up.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memory.clock import Clock
from memory.temporal import ToolCallAdvisor, classify_tool, humanize_duration
from memory.temporal.horizons import ToolSpec, as_tool_spec
from memory.temporal.results import ResultStatus, declared_freshness, result_status
from memory.temporal.signals import content_text
from services.agent_log import iso

FRESHNESS_KEY = "tempomem/freshness"
DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_RESULT_CHARS = 1 << 20
#: Where a tool's horizon came from (`HorizonEstimate.source`), as reasons say it.
SOURCE_WORDS = {
    "declared": "declared by the tool",
    "described": "the update cadence in its description",
    "lexicon": "inferred from its name and description",
    "embedding": "inferred from its description",
    "lexicon+embedding": "inferred from its name and description",
    "default": "the default for a tool of unknown volatility",
}


@dataclass(frozen=True)
class ToolPolicy:
    """Whether results of a tool may be cached, and for how long (from the tool alone)."""

    name: str
    cacheable: bool
    horizon_s: float | None  # None: the tool is never cached (not read-only)
    horizon_source: str  # where the horizon came from, in words ("--horizon", SOURCE_WORDS)
    note: str  # why it is (not) cached, for reasons


@dataclass(frozen=True)
class Freshness:
    """What `_meta["tempomem/freshness"]` says about one result."""

    observed_at: float
    age_s: float
    horizon_s: float | None
    from_cache: bool
    reason: str

    def as_meta(self) -> dict[str, Any]:
        return {
            "observed_at": iso(self.observed_at),
            "age_s": round(self.age_s, 3),
            "horizon_s": self.horizon_s,
            "from_cache": self.from_cache,
            "reason": self.reason,
        }

    def stamp_line(self) -> str:
        """The one line `--stamp` puts before text results."""
        age = humanize_duration(self.age_s)
        when = "observed just now" if age == "just now" else f"observed {age} ago"
        source = "from cache" if self.from_cache else "from the tool"
        return f"[tempomem: {when} ({iso(self.observed_at)}), {source}]"


@dataclass(frozen=True)
class _Entry:
    result: dict[str, Any]
    observed_at: float
    horizon_s: float
    horizon_source: str


@dataclass(frozen=True)
class Lookup:
    """The answer of `FreshnessCache.lookup`: a cached result to serve, or why to call."""

    result: dict[str, Any] | None
    freshness: Freshness | None  # set when `result` is served from the cache
    reason: str  # why the upstream is called (when `result` is None)


def arguments_key(name: str, arguments: Mapping[str, Any] | None) -> str:
    """The cache key of a call: the tool name and its arguments as canonical JSON."""
    return json.dumps([name, dict(arguments or {})], sort_keys=True, separators=(",", ":"))


def span(seconds: float) -> str:
    """A duration people read: '3 minutes', '0.25 s' (under a second)."""
    return f"{seconds:.2g} s" if seconds < 1 else humanize_duration(seconds)


def parse_horizons(values: Iterable[str]) -> dict[str, float]:
    """`TOOL=SECONDS` options as {tool: seconds}; 0 switches caching off for that tool."""
    horizons: dict[str, float] = {}
    for value in values:
        name, sep, raw = value.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--horizon {value!r}: expected TOOL=SECONDS, e.g. get_weather=600")
        try:
            seconds = float(raw)
        except ValueError:
            raise ValueError(f"--horizon {value!r}: {raw!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"--horizon {value!r}: seconds must be finite and >= 0")
        if name in horizons:
            raise ValueError(f"--horizon names {name!r} twice")
        horizons[name] = seconds
    return horizons


def result_text(result: Mapping[str, Any]) -> str:
    """The text of a result's text blocks (else its structured content as JSON)."""
    blocks = [b for b in result.get("content") or () if isinstance(b, Mapping)]
    text = content_text([b for b in blocks if b.get("type") == "text"])
    if not text.strip() and result.get("structuredContent") is not None:
        return content_text(result["structuredContent"])
    return text


class FreshnessCache:
    """Per-tool policies from the upstream's tool list, and the cache of read results.

    Args:
        clock: where "now" comes from (`memory.SystemClock`, or `SimClock` in tests).
        horizons: `--horizon` overrides, tool -> seconds (0: never cache).
        advisor: gives a tool's horizon when neither an override nor the result declares one.
        max_entries, max_result_chars: bounds of the cache (see the module docstring).
    """

    def __init__(
        self,
        clock: Clock,
        horizons: Mapping[str, float] | None = None,
        advisor: ToolCallAdvisor | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_result_chars: int = DEFAULT_MAX_RESULT_CHARS,
    ) -> None:
        if max_entries < 1 or max_result_chars < 1:
            raise ValueError("max_entries and max_result_chars must be >= 1")
        self.clock = clock
        self.horizons = dict(horizons or {})
        self.advisor = advisor if advisor is not None else ToolCallAdvisor()
        self.max_entries = max_entries
        self.max_result_chars = max_result_chars
        self._specs: dict[str, ToolSpec] = {}
        self._policies: dict[str, ToolPolicy] = {}
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    # -- tools ---------------------------------------------------------------------------------
    def learn_tools(self, tools: Iterable[Mapping[str, Any]]) -> None:
        """Read MCP tool dicts (as `tools/list` gives them); a changed tool forgets its cache."""
        for tool in tools:
            spec = as_tool_spec(tool)
            if self._specs.get(spec.name) != spec:
                self._specs[spec.name] = spec
                self._policies.pop(spec.name, None)
                self.forget(spec.name)

    def known(self, name: str) -> bool:
        return name in self._specs

    def policy(self, name: str) -> ToolPolicy:
        """The caching policy of tool `name` (an unknown tool is never cached)."""
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = self._policy_of(name)
        return policy

    def _policy_of(self, name: str) -> ToolPolicy:
        spec = self._specs.get(name)
        if spec is None:
            return ToolPolicy(name, False, None, "unknown", f"{name} is not in the tool list")
        nature = classify_tool(spec)
        if nature.is_action:
            why = "its annotations" if nature.source == "annotations" else f"its {nature.source}"
            return ToolPolicy(
                name, False, None, nature.source, f"{name} changes the world (by {why})"
            )
        if nature.source == "default":
            return ToolPolicy(
                name, False, None, "default",
                f"nothing says {name} is read-only (no readOnlyHint, no lookup verb)",
            )  # fmt: skip
        if name in self.horizons:
            seconds = self.horizons[name]
            note = (
                f"--horizon {name}={seconds:g}"
                if seconds > 0
                else (f"caching is off for {name} (--horizon {name}=0)")
            )
            return ToolPolicy(name, seconds > 0, seconds, "--horizon", note)
        estimate = self.advisor.horizon(spec)
        source = SOURCE_WORDS.get(estimate.source, estimate.source)
        note = f"{estimate.volatility.value} tool"
        return ToolPolicy(name, True, estimate.horizon_s, source, note)

    # -- the cache -----------------------------------------------------------------------------
    def lookup(self, name: str, arguments: Mapping[str, Any] | None) -> Lookup:
        """A fresh cached result for this call, or why the upstream has to be called."""
        policy = self.policy(name)
        if not policy.cacheable:
            return Lookup(None, None, f"called the tool: not cached, {policy.note}")
        key = arguments_key(name, arguments)
        entry = self._entries.get(key)
        if entry is None:
            return Lookup(None, None, "called the tool: no cached result for these arguments")
        now = self.clock.now()
        age = max(0.0, now - entry.observed_at)
        horizon = f"horizon of {span(entry.horizon_s)} ({entry.horizon_source})"
        if age > entry.horizon_s:
            del self._entries[key]
            old = span(age)
            return Lookup(
                None, None, f"called the tool: the cached result is {old} old, past its {horizon}"
            )
        self._entries.move_to_end(key)
        reason = f"from cache: same arguments, {span(age)} old, within its {horizon}"
        freshness = Freshness(entry.observed_at, age, entry.horizon_s, True, reason)
        return Lookup(entry.result, freshness, "")

    def record(
        self,
        name: str,
        arguments: Mapping[str, Any] | None,
        result: Mapping[str, Any],
        observed_at: float,
        why_called: str,
    ) -> Freshness:
        """Keep a result the upstream just gave (when it may be cached); its freshness."""
        policy = self.policy(name)
        if not policy.cacheable:
            return Freshness(observed_at, 0.0, policy.horizon_s, False, why_called)
        text = result_text(result)
        status = result_status(text, bool(result.get("isError")))
        if status is not ResultStatus.OK:
            return Freshness(
                observed_at, 0.0, policy.horizon_s, False,
                f"{why_called}; the result is not cached ({status.value})",
            )  # fmt: skip
        horizon_s, source = policy.horizon_s, policy.horizon_source
        assert horizon_s is not None
        if source != "--horizon":
            declared = declared_freshness(text, result.get("_meta"))
            seconds = None if declared is None else declared.horizon_s(observed_at)
            if declared is not None and seconds is not None:
                horizon_s, source = seconds, f"declared by the result: {declared.source}"
        if horizon_s <= 0:
            return Freshness(
                observed_at,
                0.0,
                horizon_s,
                False,
                f"{why_called}; the result is not cached ({source})",
            )
        if len(json.dumps(result, default=str)) > self.max_result_chars:
            return Freshness(
                observed_at, 0.0, horizon_s, False,
                f"{why_called}; the result is over {self.max_result_chars} characters: not cached",
            )  # fmt: skip
        key = arguments_key(name, arguments)
        self._entries[key] = _Entry(dict(result), observed_at, horizon_s, source)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return Freshness(observed_at, 0.0, horizon_s, False, why_called)

    def forget(self, name: str) -> int:
        """Drop every cached result of tool `name`; how many there were."""
        prefix = json.dumps([name])[:-1] + ","
        stale = [key for key in self._entries if key.startswith(prefix)]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)


def with_freshness(
    result: Mapping[str, Any], freshness: Freshness, stamp: bool = False
) -> dict[str, Any]:
    """A copy of an MCP result dict with `_meta["tempomem/freshness"]` set, and with `stamp`
    the first text block prefixed by `Freshness.stamp_line` (a text block is added if none)."""
    out = dict(result)
    out["_meta"] = {**(result.get("_meta") or {}), FRESHNESS_KEY: freshness.as_meta()}
    if stamp:
        blocks = [dict(b) if isinstance(b, Mapping) else b for b in result.get("content") or ()]
        line = freshness.stamp_line()
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "text":
                block["text"] = f"{line}\n{block.get('text', '')}"
                break
        else:
            blocks.insert(0, {"type": "text", "text": line})
        out["content"] = blocks
    return out
