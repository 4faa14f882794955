"""Coverage: does a tool's cached result already answer the new request, whatever its age?

Two heuristics, both lexical, both documented here because both can be wrong:

1. **Same entity.** Entity-like tokens of the request — identifiers with digits (LH400, P-1043,
   2025-12-20), all-caps codes (AAPL, EUR), capitalised names (Berlin; but never a common word
   such as "What" or "Define", which start sentences), quoted terms
   ('depreciation'), and a bare number right after a parameter's name ("article 20") — must
   each appear (case-folded; hyphenated ids part by part) in the cached exchange: the call's
   arguments, its result, the messages of that exchange, or the tool's own spec. A request
   naming something new ("And in Berlin?") is not covered. Entities written in lower case
   ("weather in berlin") are not recognised: such a request counts as the same entity.
2. **Asked-for field.** Request words that name a common attribute (`FIELD_GROUPS`: humidity,
   gate, blood pressure, warranty, ...) must find one of that attribute's evidence words in the
   cached result (its JSON keys, split at `_` and camelCase, and its values). A request naming
   no known attribute is not judged on fields. The groups are general vocabulary, but short:
   an attribute missing from them is never detected as missing.

An explicit request to look again ("check again", "refresh") is never covered.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memory.temporal.horizons import ToolSpec, singular, spec_text_fields, words

# attribute -> (words in a request that ask for it, extra evidence words in a result)
FIELD_GROUPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    name: (frozenset(asks.split()), frozenset(asks.split()) | frozenset(evidence.split()))
    for name, asks, evidence in (
        # weather
        ("humidity", "humidity humid", ""),
        ("temperature", "temperature temp degree hot cold warm celsius fahrenheit jacket coat", ""),
        ("wind", "wind windy gust", ""),
        (
            "precipitation",
            "rain raining rainy precipitation snow snowing umbrella storm",
            "condition",
        ),
        ("sky", "sunny sunglasses cloudy cloud overcast sky", "condition sun clear"),
        ("uv", "uv sunscreen", ""),
        ("air quality", "aqi pollution pollen smog", ""),
        ("forecast", "forecast tomorrow tonight weekend", "hourly daily"),
        ("sunrise", "sunrise sunset", ""),
        # health
        ("heart rate", "heart pulse bpm", ""),
        ("oxygen", "spo2 oxygen saturation", ""),
        ("blood pressure", "pressure systolic diastolic", "bp"),
        ("respiration", "respiratory respiration breathing", ""),
        ("glucose", "glucose sugar", ""),
        # markets and money
        ("price", "price cost worth rate fare fee", "quote last amount eur usd gbp total"),
        ("volume", "volume traded turnover", ""),
        ("market cap", "cap capitalization capitalisation", ""),
        ("change", "change changed up down gain loss moved performance", "pct percent delta"),
        ("bid", "bid", "buy"),
        ("ask", "ask offer", "sell"),
        ("spread", "spread", ""),
        ("dividend", "dividend yield", ""),
        ("earnings", "earnings eps pe", ""),
        # travel and transport
        ("gate", "gate", ""),
        ("terminal", "terminal", ""),
        ("platform", "platform track", ""),
        ("seat", "seat seating", ""),
        ("baggage", "baggage luggage carousel", ""),
        ("delay", "delay delayed late", "status"),
        ("departure", "depart departs departure leave leaves takeoff", "first last"),
        ("arrival", "arrive arrives arrival land landing", ""),
        ("toll", "toll", ""),
        ("incident", "incident accident closure roadwork construction", ""),
        ("fuel", "fuel petrol diesel gas tank", ""),
        ("battery", "battery charge", "mah"),
        ("heading", "heading direction bearing", ""),
        ("speed", "speed fast kmh mph", ""),
        ("position", "where location position", "lat lon latitude longitude address"),
        # hospitality
        ("breakfast", "breakfast meal", ""),
        ("parking", "parking", ""),
        ("wifi", "wifi internet", ""),
        ("pool", "pool gym spa", ""),
        ("cancellation", "cancellation cancel refundable refund", ""),
        ("rooms", "room vacancy", "available availability"),
        ("rating", "rating star", "review"),
        # news, sport
        ("author", "author wrote writer journalist byline", ""),
        ("source", "source publisher outlet", ""),
        ("scorer", "scorer scored", "goal"),
        ("minute", "minute half", "min"),
        ("cards", "card yellow red", ""),
        ("lineup", "lineup squad", ""),
        # law, products, words
        ("penalty", "fine penalty sanction", ""),
        ("exemption", "exemption exception", ""),
        ("warranty", "warranty guarantee", ""),
        ("weight", "weight heavy weigh", "kg lb"),
        ("dimensions", "dimension size height width", ""),
        ("colour", "color colour", ""),
        ("material", "material", ""),
        ("etymology", "etymology origin", ""),
        ("pronunciation", "pronounce pronunciation", ""),
        ("synonym", "synonym antonym", ""),
    )
}
_ASKED_BY_WORD: dict[str, tuple[str, ...]] = {}
for _name, (_asks, _) in FIELD_GROUPS.items():
    for _word in _asks:
        _ASKED_BY_WORD[singular(_word)] = (*_ASKED_BY_WORD.get(singular(_word), ()), _name)

# Common words that start sentences capitalised; never entities.
COMMON_WORDS = frozenset(
    """a an the and or but so if then also too any some all this that these those it its i i'm
    me my we our you your he she they them there here what what's whats where where's when who
    whose which why how how's is are was were be been do does did done can could would should
    will shall may might must have has had let please thanks thank ok okay yes no hi hello hey
    now still again just maybe tell show give get find check list compare define explain
    remind summarise summarize describe look fetch and in on at for of to from about with by
    as not any new latest current today tomorrow yesterday great good nice sure well""".split()  # noqa: SIM905
)
REFRESH_PHRASES = (
    "check again",
    "look again",
    "refresh",
    "re-check",
    "recheck",
    "double-check",
    "double check",
    "fetch it again",
    "look it up again",
)

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-.][A-Za-z0-9]+)*")
_QUOTED = re.compile(r"(?:^|(?<=\s))['\"‘“]([^'\"’”]+)['\"’”](?![A-Za-z])")


@dataclass(frozen=True)
class Coverage:
    """Whether the cached result covers the request, and why not when it does not."""

    covered: bool
    reason: str
    unmatched_entities: tuple[str, ...] = ()
    missing_fields: tuple[str, ...] = ()


def asks_for_refresh(request: str) -> bool:
    """Whether the user explicitly asks to look again."""
    lowered = request.lower()
    return any(phrase in lowered for phrase in REFRESH_PHRASES)


def request_entities(request: str, slot_words: Iterable[str] = ()) -> list[str]:
    """Entity-like tokens of a request, in order (see the module docstring for the rules)."""
    slots = {singular(w.lower()) for w in slot_words}
    entities = [m.group(1).strip() for m in _QUOTED.finditer(request)]
    previous_word = ""
    for match in _TOKEN.finditer(request):
        token = match.group(0)
        lowered = token.lower()
        has_digit = any(c.isdigit() for c in token)
        has_alpha = any(c.isalpha() for c in token)
        if has_digit and (has_alpha or "-" in token):
            entities.append(token)
        elif has_digit:
            if previous_word in slots:  # "article 20", "room 12": a number naming a thing
                entities.append(token)
        elif lowered in COMMON_WORDS:
            pass
        elif token[0].isupper():  # names (Berlin) and codes (AAPL)
            entities.append(token)
        previous_word = singular(lowered)
    return entities


def known_tokens(texts: Iterable[str]) -> set[str]:
    """Case-folded tokens (whole and hyphen/dot parts, singular too) of the cached exchange."""
    known: set[str] = set()
    for text in texts:
        known |= _text_tokens(text)
    return known


_CACHE_MAX = 4096  # bounded; cached exchanges are re-read at every decision of a conversation


@functools.lru_cache(maxsize=_CACHE_MAX)
def _text_tokens(text: str) -> frozenset[str]:
    known: set[str] = set()
    for token in _TOKEN.findall(text):
        lowered = token.lower()
        known.add(lowered)
        known.add(singular(lowered))
        if "-" in lowered or "." in lowered:
            for part in re.split(r"[-.]", lowered):
                known.add(part)
                known.add(singular(part))
    return frozenset(known)


@functools.lru_cache(maxsize=_CACHE_MAX)
def _result_words(text: str) -> frozenset[str]:
    return frozenset(words(text))


def _entity_known(entity: str, known: set[str]) -> bool:
    lowered = entity.lower()
    if lowered in known or singular(lowered) in known:
        return True
    parts = [p for p in re.split(r"[-.\s]+", lowered) if p]
    return bool(parts) and all(p in known or singular(p) in known for p in parts)


def requested_fields(request: str) -> list[str]:
    """Attributes (`FIELD_GROUPS` names) the request asks for."""
    found: list[str] = []
    for word in words(request):
        for name in _ASKED_BY_WORD.get(word, ()):
            if name not in found:
                found.append(name)
    return found


def check_coverage(
    request: str,
    arguments: Mapping[str, Any],
    result: str,
    context: Iterable[str] = (),
    tool: ToolSpec | None = None,
) -> Coverage:
    """Whether `result` (of a call with `arguments`) answers `request`; `context` is the text of
    the messages of that exchange (the question that led to the call, the answer after it)."""
    if asks_for_refresh(request):
        return Coverage(False, "the user asks to look again")
    argument_text = json.dumps(arguments, ensure_ascii=False)
    spec_texts, spec_slots = _spec_vocabulary(tool)
    slot_words = [*spec_slots, *(w for key in arguments for w in words(str(key)))]
    entities = request_entities(request, slot_words)
    known = known_tokens((argument_text, result, *context, *spec_texts)) if entities else set()
    unmatched = tuple(e for e in entities if not _entity_known(e, known))
    result_words = _result_words(result)
    missing = tuple(
        name for name in requested_fields(request) if not (FIELD_GROUPS[name][1] & result_words)
    )
    if unmatched:
        return Coverage(
            False,
            f"the request mentions {', '.join(unmatched)}, not in the cached call "
            f"({_short(argument_text)})",
            unmatched,
            missing,
        )
    if missing:
        return Coverage(False, f"the cached result has no {', '.join(missing)}", unmatched, missing)
    return Coverage(True, "the cached result covers the request's entities and fields")


_SPEC_CACHE: dict[int, tuple[ToolSpec, tuple[str, ...], tuple[str, ...]]] = {}


def _spec_vocabulary(tool: ToolSpec | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts of the spec, words of its parameter names); cached per (frozen) spec object."""
    if tool is None:
        return (), ()
    hit = _SPEC_CACHE.get(id(tool))
    if hit is None or hit[0] is not tool:
        properties = tool.parameters.get("properties") or {}
        names = properties if isinstance(properties, Mapping) else {}
        slots = tuple(w for key in names for w in words(str(key)))
        if len(_SPEC_CACHE) >= _CACHE_MAX:
            _SPEC_CACHE.clear()
        hit = (tool, spec_text_fields(tool), slots)
        _SPEC_CACHE[id(tool)] = hit
    return hit[1], hit[2]


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
