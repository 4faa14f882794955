"""Freshness horizon per tool: how long a tool's result stays true enough to answer from.

A horizon is declared (`ToolSpec(horizon_s=...)`, `@fresh_for(seconds)`, or an `x-horizon-s`
field in an OpenAI function spec), described (the description states an update cadence:
"updated every 5 minutes", "refreshed hourly"), or inferred into a volatility class:

    realtime 30 s · minutes 10 min · hours 6 h · days 3 d · static 1 year

Inference reads the tool's name (weight 2), description and parameter names/descriptions
(weight 1) against `LEXICON` (`lexicons/horizon_votes.toml`): each keyword or two-word phrase
votes for one or more classes with a weight (live feeds vote minutes, trackers of slow
processes such as orders, shipments and applications vote hours, published reference data
votes static). With an embedder, the cosine
similarity of the spec to each class's prototype sentences is turned into a second vote
(softmax, temperature `EMBED_TEMPERATURE`) and averaged with the lexicon's. The horizon is the
vote-weighted geometric mean of the class horizons, so a "weather" tool (half minutes, half
hours) gets about an hour; the class is the top vote (ties go to the more volatile class,
because a needless call costs less than a stale answer). A tool with no vote at all gets
`DEFAULT_CLASS` (minutes), for the same reason.

The advisor refines these per result: freshness the result declares wins, and re-calls teach
a change rate (`rates.ChangeRateModel`) that replaces an inferred horizon once there is evidence.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memory.numbers import is_real
from memory.temporal.lexicons import load_lexicon


class Volatility(StrEnum):
    """How fast a tool's world changes; each class has a representative horizon."""

    REALTIME = "realtime"
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    STATIC = "static"


CLASS_HORIZON_S: dict[Volatility, float] = {
    Volatility.REALTIME: 30.0,
    Volatility.MINUTES: 10 * 60.0,
    Volatility.HOURS: 6 * 3600.0,
    Volatility.DAYS: 3 * 86400.0,
    Volatility.STATIC: 365 * 86400.0,
}
CLASS_ORDER = tuple(Volatility)  # most volatile first: the tie-break order
DEFAULT_CLASS = Volatility.MINUTES
NAME_WEIGHT = 2.0
EMBED_TEMPERATURE = 0.05
HORIZON_FIELDS = ("x-horizon-s", "x_horizon_s", "horizon_s")
SCHEMA_FIELDS = ("parameters", "inputSchema", "input_schema")

# Short names of the classes for the tables below (each bound by name, not by position).
REALTIME = Volatility.REALTIME
MINUTES = Volatility.MINUTES
HOURS = Volatility.HOURS
DAYS = Volatility.DAYS
STATIC = Volatility.STATIC

# keyword -> {class: weight}, from lexicons/horizon_votes.toml (general knowledge about how
# fast things change, not fitted to any labelled data).
LEXICON: dict[str, dict[Volatility, float]] = {
    word: {Volatility(name): float(weight) for name, weight in votes.items()}
    for word, votes in load_lexicon("horizon_votes").items()
}

# Sentences describing each class, embedded once per embedder (when one is given).
CLASS_PROTOTYPES: dict[Volatility, tuple[str, ...]] = {
    REALTIME: (
        "live real-time market price quote or order book that changes every second",
        "current sensor reading, GPS position or patient vital signs from a monitor",
        "live score of a game in progress",
    ),
    MINUTES: (
        "current traffic, queue length or wait time",
        "status of a flight, delivery or order that changes within minutes",
        "current currency exchange rate or seat availability",
        "live departures board, bikes at a dock or free parking spaces right now",
        "open incidents and alerts of a service, refreshed every minute",
    ),
    HOURS: (
        "latest news headlines about a topic",
        "weather forecast for today",
        "calendar events and today's schedule",
        "tracking status of a shipped order or parcel on its way",
        "progress of a long-running job, application or support ticket",
    ),
    DAYS: (
        "train timetable or opening hours",
        "product catalogue entry and specifications",
        "contact details, user profile or restaurant menu",
    ),
    STATIC: (
        "text of a law or regulation",
        "dictionary definition of a word",
        "historical facts, physical constants or encyclopedia article",
        "published reference documentation, standards or a book's bibliographic record",
    ),
}


class ToolSpec(BaseModel):
    """A tool as the advisor sees it; `horizon_s` declares how long its results stay fresh and
    `annotations` carries MCP-style hints (`readOnlyHint`, `destructiveHint`, `idempotentHint`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    horizon_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    annotations: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_openai(cls, spec: Mapping[str, Any]) -> ToolSpec:
        """From `{"type": "function", "function": {...}}`, a bare function dict, an MCP tool
        (`inputSchema`) or an Anthropic tool (`input_schema`).

        A horizon may be declared in `x-horizon-s` (or `x_horizon_s`, `horizon_s`) on the
        function or on the outer dict; `annotations` may sit inside "function" or beside it.
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"tool spec must be a dict, got {type(spec).__name__}")
        function = spec.get("function", spec)
        if not isinstance(function, Mapping):
            raise ValueError("tool spec field 'function' must be a dict")
        sources = (function, spec)
        horizon = next(
            (s[key] for s in sources for key in HORIZON_FIELDS if s.get(key) is not None), None
        )
        parameters: Mapping[str, Any] = next(
            (s[key] for s in sources for key in SCHEMA_FIELDS if isinstance(s.get(key), Mapping)),
            {},
        )
        annotations: dict[str, Any] = {}
        for source in reversed(sources):  # the function's own annotations win
            found = source.get("annotations")
            if isinstance(found, Mapping):
                annotations.update(found)
        try:
            return cls(
                name=function.get("name") or "",
                description=function.get("description") or "",
                parameters=dict(parameters),
                horizon_s=horizon,
                annotations=annotations,
            )
        except ValidationError as err:
            raise ValueError(f"tool spec {function.get('name')!r}: {err}") from None

    @classmethod
    def from_object(cls, tool: Any) -> ToolSpec:
        """From a tool object with `name` and `description` attributes (a LangChain
        `BaseTool`, an MCP `Tool` model, an Agents SDK `FunctionTool`)."""
        schema = next(
            (
                value
                for key in ("args_schema_json", "params_json_schema", "inputSchema", "input_schema")
                if isinstance(value := getattr(tool, key, None), Mapping)
            ),
            {},
        )
        annotations = getattr(tool, "annotations", None)
        if annotations is not None and not isinstance(annotations, Mapping):
            dump = getattr(annotations, "model_dump", None)
            annotations = dump(exclude_none=True) if callable(dump) else None
        return cls(
            name=str(tool.name),
            description=str(getattr(tool, "description", "") or ""),
            parameters=dict(schema),
            horizon_s=getattr(tool, FRESH_FOR_ATTRIBUTE, None),
            annotations=dict(annotations or {}),
        )

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> ToolSpec:
        """From a Python function: name, docstring, parameter names, `@fresh_for` horizon."""
        doc = inspect.getdoc(fn) or ""
        names = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
        return cls(
            name=fn.__name__,
            description=doc.split("\n\n")[0].strip(),
            parameters={"type": "object", "properties": {p: {} for p in names}},
            horizon_s=getattr(fn, FRESH_FOR_ATTRIBUTE, None),
        )

    def digest(self) -> str:
        """Stable hash of the spec (blake2b of its canonical JSON): the cache key."""
        return stable_digest(self.model_dump(mode="json"))


def stable_digest(value: Any) -> str:
    """blake2b-128 of canonical JSON: the same across processes, unlike Python's hash()."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


FRESH_FOR_ATTRIBUTE = "__tempomem_horizon_s__"
F = TypeVar("F", bound=Callable[..., Any])


def fresh_for(seconds: float) -> Callable[[F], F]:
    """Declare that a tool function's results stay fresh for `seconds`."""
    if not is_real(seconds):
        raise ValueError(f"fresh_for: seconds must be a number, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"fresh_for: seconds must be finite and > 0, got {seconds}")

    def mark(fn: F) -> F:
        setattr(fn, FRESH_FOR_ATTRIBUTE, float(seconds))
        return fn

    return mark


def as_tool_spec(tool: ToolSpec | Mapping[str, Any] | Callable[..., Any]) -> ToolSpec:
    """Any accepted tool form (ToolSpec, OpenAI/MCP/Anthropic dict, tool object with a `name`,
    decorated function) as a ToolSpec."""
    if isinstance(tool, ToolSpec):
        return tool
    if isinstance(tool, Mapping):
        return ToolSpec.from_openai(tool)
    if isinstance(getattr(tool, "name", None), str) and not inspect.isroutine(tool):
        return ToolSpec.from_object(tool)
    if callable(tool):
        return ToolSpec.from_function(tool)
    raise ValueError(f"cannot read a tool spec from {type(tool).__name__}")


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors, shape (len(texts), dim)."""

    def embed(self, texts: Sequence[str]) -> Any: ...


@dataclass(frozen=True)
class HorizonEstimate:
    """A tool's horizon, its volatility class, where it came from, and the class votes."""

    horizon_s: float
    volatility: Volatility
    # "declared" | "described" | "lexicon" | "embedding" | "lexicon+embedding" | "default"
    # (the advisor adds "learned" and "result")
    source: str
    votes: Mapping[Volatility, float]


_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def words(text: str) -> list[str]:
    """Lower-case words of text, snake_case and camelCase split, crude plural folding."""
    return list(word_tuple(text))


@functools.lru_cache(maxsize=8192)
def word_tuple(text: str) -> tuple[str, ...]:
    """`words(text)` as a tuple, remembered per text (requests and results recur)."""
    return tuple(singular(w) for w in _WORD.findall(_CAMEL.sub(" ", text).lower()))


def wordset(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text` as a set (for word lists written as prose)."""
    return frozenset(text.split())


def singular(word: str) -> str:
    if len(word) > 3 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def spec_text_fields(spec: ToolSpec) -> tuple[str, str]:
    """(name as words, description + parameter names and descriptions) of a spec."""
    name = " ".join(words(spec.name))
    properties = spec.parameters.get("properties") or {}
    parts = [spec.description]
    if isinstance(properties, Mapping):
        for key, schema in properties.items():
            parts.append(str(key).replace("_", " "))
            if isinstance(schema, Mapping) and schema.get("description"):
                parts.append(str(schema["description"]))
    return name, " ".join(parts)


def lexicon_votes(spec: ToolSpec) -> dict[Volatility, float]:
    """Weighted keyword votes per class from the spec's name, description and parameters."""
    name, rest = spec_text_fields(spec)
    votes = dict.fromkeys(CLASS_ORDER, 0.0)
    for text, weight in ((name, NAME_WEIGHT), (rest, 1.0)):
        tokens = words(text)
        grams = set(tokens) | {f"{first} {second}" for first, second in itertools.pairwise(tokens)}
        for gram in grams:
            for volatility, vote in LEXICON.get(gram, {}).items():
                votes[volatility] += weight * vote
    return votes


def horizon_from_votes(votes: Mapping[Volatility, float]) -> tuple[float, Volatility]:
    """Vote-weighted geometric mean of class horizons, and the top class (ties: more volatile)."""
    total = sum(votes.values())
    if total <= 0:
        return CLASS_HORIZON_S[DEFAULT_CLASS], DEFAULT_CLASS
    log_h = sum(
        vote / total * math.log(CLASS_HORIZON_S[volatility]) for volatility, vote in votes.items()
    )
    top = max(CLASS_ORDER, key=lambda c: (votes.get(c, 0.0), -CLASS_ORDER.index(c)))
    return math.exp(log_h), top


class HorizonResolver:
    """Declared or inferred horizons, cached by the spec's stable digest (bounded)."""

    def __init__(self, embedder: Embedder | None = None, max_cache: int = 4096) -> None:
        self.embedder = embedder
        self.max_cache = max_cache
        self._cache: dict[str, HorizonEstimate] = {}
        self._prototypes: np.ndarray | None = None

    def resolve(self, spec: ToolSpec, digest: str | None = None) -> HorizonEstimate:
        key = digest or spec.digest()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._estimate(spec)
            if len(self._cache) >= self.max_cache:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit

    def _estimate(self, spec: ToolSpec) -> HorizonEstimate:
        if spec.horizon_s is not None:
            return HorizonEstimate(spec.horizon_s, closest_class(spec.horizon_s), "declared", {})
        cadence = described_cadence_s(spec.description)
        if cadence is not None:
            return HorizonEstimate(cadence, closest_class(cadence), "described", {})
        lexical = lexicon_votes(spec)
        lexical_total = sum(lexical.values())
        if self.embedder is None:
            horizon, top = horizon_from_votes(lexical)
            return HorizonEstimate(horizon, top, "lexicon" if lexical_total else "default", lexical)
        embedded = self._embedding_votes(spec)
        if lexical_total > 0:
            votes = {c: 0.5 * lexical[c] / lexical_total + 0.5 * embedded[c] for c in CLASS_ORDER}
            source = "lexicon+embedding"
        else:
            votes, source = embedded, "embedding"
        horizon, top = horizon_from_votes(votes)
        return HorizonEstimate(horizon, top, source, votes)

    def _embedding_votes(self, spec: ToolSpec) -> dict[Volatility, float]:
        assert self.embedder is not None
        if self._prototypes is None:
            rows = []
            for volatility in CLASS_ORDER:
                vectors = np.asarray(self.embedder.embed(list(CLASS_PROTOTYPES[volatility])))
                mean = vectors.mean(axis=0)
                rows.append(mean / np.linalg.norm(mean))
            self._prototypes = np.stack(rows)
        name, rest = spec_text_fields(spec)
        vector = np.asarray(self.embedder.embed([f"{name}: {rest}"]))[0]
        similarity = self._prototypes @ vector
        weights = np.exp((similarity - similarity.max()) / EMBED_TEMPERATURE)
        weights /= weights.sum()
        return {
            volatility: float(weight)
            for volatility, weight in zip(CLASS_ORDER, weights, strict=True)
        }


_UNIT_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0}
_UNIT_S |= {"month": 30 * 86400.0, "quarter": 91 * 86400.0, "year": 365 * 86400.0}
_ADVERB_S = {"hourly": 3600.0, "daily": 86400.0, "nightly": 86400.0, "weekly": 7 * 86400.0}
_ADVERB_S |= {"monthly": 30 * 86400.0, "quarterly": 91 * 86400.0, "yearly": 365 * 86400.0}
_ADVERB_S |= {"annually": 365 * 86400.0}
_UPDATE = (
    r"(?:updated?|updates|refresh(?:ed|es)?|chang(?:es|ed)|recomputed|recalculated|published|"
    r"revised|polled|sampled)"
)
_EVERY = re.compile(
    _UPDATE + r"\s+(?:about\s+|roughly\s+|approximately\s+)?(?:every|each|once\s+(?:an?|per|every))"
    r"\s+(?:(\d+(?:\.\d+)?)\s*)?(second|sec|minute|min|hour|hr|day|week|month|quarter|year)s?\b"
)
_ADVERB = re.compile(_UPDATE + r"\s+(" + "|".join(_ADVERB_S) + r")\b")
_SHORT_UNIT = {"sec": "second", "min": "minute", "hr": "hour"}


def described_cadence_s(description: str) -> float | None:
    """The update interval a description states ("updated every 5 minutes", "refreshed
    hourly", "published once a year"), in seconds; None when it states none."""
    text = description.lower()
    match = _EVERY.search(text)
    if match:
        unit = _SHORT_UNIT.get(match.group(2), match.group(2))
        return float(match.group(1) or 1.0) * _UNIT_S[unit] or None
    match = _ADVERB.search(text)
    return _ADVERB_S[match.group(1)] if match else None


def closest_class(horizon_s: float) -> Volatility:
    """The class whose horizon is nearest on a log scale (for reporting declared horizons)."""
    if horizon_s <= 0:
        return Volatility.REALTIME
    return min(CLASS_ORDER, key=lambda c: abs(math.log(CLASS_HORIZON_S[c] / horizon_s)))
