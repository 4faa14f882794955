"""Coverage: does a tool's cached result already answer the new request, whatever its age?

Two heuristics, lexical first, documented here because both can be wrong:

1. **Same entity.** Entity-like tokens of the request — identifiers with digits (LH400, P-1043,
   2025-12-20), all-caps codes (AAPL, EUR), capitalised names (Berlin; but never a common word,
   verb or interjection such as "What", "Book" or "Before", which start sentences), quoted
   terms ('depreciation'), and a bare number right after a parameter's name ("article 20") —
   must each appear (case-folded; hyphenated ids part by part) in the cached exchange: the
   call's arguments, its result, the messages of that exchange, or the tool's own spec. A
   request naming something new ("And in Berlin?") is not covered. Entities written in lower
   case ("weather in berlin") are not recognised: such a request counts as the same entity.
   Quantities, ordinals and clock times (6pm, 20min, 2nd, 300eur) are values to compare, never
   entities. Day, month and day-part names and dates are settled by reasoning — covered — when
   the request compares ("by Friday", "before 6pm") and the result carries a time or date
   (an ETA, a departure), or when the result lists several dates; otherwise they must appear.
2. **Asked-for field.** Request words that name a common attribute (`FIELD_GROUPS`: humidity,
   gate, arrival, delivery, blood pressure, warranty, ...) must find one of that attribute's
   evidence words in the cached result (its JSON keys, split at `_` and camelCase, and its
   values; "arrive" is answered by an "eta"). A request naming no known attribute is not judged
   on fields. The groups are general vocabulary, but short: an attribute missing from them is
   never detected as missing.

With an embedder (MiniLM), what words miss may match by meaning: an unmatched entity whose
cosine with an argument value is >= `ENTITY_SIMILARITY` ("NYC" ~ "New York"), a missing field
whose cosine with a result key is >= `FIELD_SIMILARITY` ("parking" ~ "car_park").

An explicit request to look again ("check again", "refresh") is never covered. A question
about an item of a listed result ("the 2nd one", "the cheapest") is judged like any other and
noted as such.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from memory.temporal.cues import INTERJECTIONS, QUESTION_STARTS, read_request
from memory.temporal.horizons import Embedder, ToolSpec, singular, spec_text_fields, words, wordset
from memory.temporal.lexicons import load_lexicon
from memory.temporal.memo import IdentityMemo
from memory.temporal.results import parse_json
from memory.temporal.tool_kinds import ACTION_VERBS, READ_VERBS

# attribute -> (words in a request that ask for it, those and the extra evidence words that
# show it in a result), from lexicons/result_fields.toml.
FIELD_GROUPS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    name: (
        frozenset(entry["asks"].split()),
        frozenset(entry["asks"].split()) | frozenset(entry.get("evidence", "").split()),
    )
    for name, entry in load_lexicon("result_fields").items()
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

# Capitalised words that start sentences or requests but never name a thing.
NOT_NAMES = (
    INTERJECTIONS
    | QUESTION_STARTS
    | ACTION_VERBS
    | READ_VERBS
    | wordset(
        """before after until till by than another same other others one two three first second
        third last next previous cheaper cheapest earlier earliest later sooner faster fastest
        more less much many few is isn't are anything nothing everything something everyone
        actually perhaps maybe instead either neither both each every only even though although
        because since while whether yet already once twice again please kindly sorry thanks
        go going gonna wanna let let's lets i'd i'll i've we'd we'll you'd use put take keep
        bring give help need want like think know see say come pick choose consider note mind
        imagine assume suppose hold hurry quick quickly simply plus btw finally true exactly
        indeed really seriously anyway besides however therefore otherwise meanwhile similar
        different old big small most several enough sound sounds seem seems looks feels guess
        wonder hope wish remember forget mean meant pardon excuse cheers probably certainly
        surely basically honestly frankly hey hi hello tell show remind explain describe"""
    )
)
# Day, month and day-part names: compared against a time in the result, not looked up in it.
TIME_WORDS = wordset(
    """monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs
    fri sat january february march april june july august september october november
    december jan feb mar apr jun jul aug sep sept oct nov dec noon midnight tonight
    morning afternoon evening weekend"""
)
_ABBREVIATIONS = wordset(
    "AM PM UTC GMT CET CEST BST EST EDT PST PDT CST CDT MST JST IST AEST ETA ETD EOD ASAP OK FYI"
)
_QUANTITY = re.compile(
    r"^\d+(?:[.,]\d+)?(?:st|nd|rd|th|am|pm|h|hr|hrs|min|mins|m|s|sec|secs|k|km|mi|kg|lb|lbs|g|ml|"
    r"l|x|eur|usd|gbp|pct|percent|gb|mb|tb|days?|weeks?|hours?|minutes?)$"
)
_DATE = re.compile(r"^\d{4}-\d{1,2}(?:-\d{1,2})?$|^\d{1,2}[-.]\d{1,2}(?:[-.]\d{2,4})?$")
_TIME_VALUE = re.compile(
    r"\b\d{1,2}:\d{2}\b|\d{4}-\d{2}-\d{2}|\b(?:eta|etd|due|deadline|expected|estimated|"
    r"arriv\w*|deliver\w*|depart\w*|opens?|closes?|until|ready|time|date|day)\b",
    re.IGNORECASE,
)
_ORDINAL = re.compile(
    r"\b(?:first|second|third|fourth|fifth|last|\d+(?:st|nd|rd|th)|#\d+|option \d+|"
    r"the (?:cheapest|earliest|latest|fastest|shortest|nearest|closest|best|other) one)\b",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-.][A-Za-z0-9]+)*")
_CACHE_MAX = 4096  # bounded; cached exchanges are re-read at every decision of a conversation
_QUOTED = re.compile(r"(?:^|(?<=\s))['\"‘“]([^'\"’”]+)['\"’”](?![A-Za-z])")


@dataclass(frozen=True)
class Coverage:
    """Whether the cached result covers the request, and why not when it does not."""

    covered: bool
    reason: str
    unmatched_entities: tuple[str, ...] = ()
    missing_fields: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # how it was judged covered (comparison, list item, meaning)


def asks_for_refresh(request: str) -> bool:
    """Whether the user explicitly asks to look again."""
    lowered = request.lower()
    return any(phrase in lowered for phrase in REFRESH_PHRASES)


def request_entities(request: str, slot_words: Iterable[str] = ()) -> list[str]:
    """Entity-like tokens of a request, in order (see the module docstring for the rules)."""
    return [entity for entity, _ in _entities(request, tuple(sorted(set(slot_words))))]


@functools.lru_cache(maxsize=_CACHE_MAX)
def _entities(request: str, slot_words: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """(entity, is a time expression) pairs of a request."""
    slots = {singular(w.lower()) for w in slot_words}
    entities = [(m.group(1).strip(), False) for m in _QUOTED.finditer(request)]
    previous_word = ""
    for match in _TOKEN.finditer(request):
        token = match.group(0)
        lowered = token.lower()
        has_digit = any(c.isdigit() for c in token)
        has_alpha = any(c.isalpha() for c in token)
        if _QUANTITY.match(lowered):
            pass  # 6pm, 20min, 2nd, 300eur: a value to compare, not a thing named
        elif has_digit and _DATE.match(lowered):
            entities.append((token, True))
        elif has_digit and (has_alpha or "-" in token):
            entities.append((token, False))
        elif has_digit:
            if previous_word in slots:  # "article 20", "room 12": a number naming a thing
                entities.append((token, False))
        elif lowered in TIME_WORDS:
            if token[0].isupper():
                entities.append((token, True))
        elif lowered in COMMON_WORDS or lowered in NOT_NAMES or token in _ABBREVIATIONS:
            pass
        elif token[0].isupper():  # names (Berlin) and codes (AAPL)
            entities.append((token, False))
        previous_word = singular(lowered)
    return tuple(entities)


def known_tokens(texts: Iterable[str]) -> set[str]:
    """Case-folded tokens (whole and hyphen/dot parts, singular too) of the cached exchange."""
    known: set[str] = set()
    for text in texts:
        known |= _text_tokens(text)
    return known


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
    embedder: Embedder | None = None,
) -> Coverage:
    """Whether `result` (of a call with `arguments`) answers `request`; `context` is the text of
    the messages of that exchange (the question that led to the call, the answer after it).
    With an `embedder`, an entity or field that words miss may still be matched by meaning."""
    if asks_for_refresh(request):
        return Coverage(False, "the user asks to look again")
    argument_text, argument_slots = _ARGUMENTS.get(arguments, _argument_vocabulary)
    spec_texts, spec_slots = _spec_vocabulary(tool)
    entities = _entities(request, _slots(spec_slots, argument_slots))
    notes: list[str] = []
    unmatched: list[str] = []
    if entities:
        known = known_tokens((argument_text, result, *context, *spec_texts))
        comparable = _comparable_times(request, result)
        for entity, is_time in entities:
            if _entity_known(entity, known):
                continue
            if is_time and comparable:
                notes.append(f"{entity} is compared with a time in the result")
            else:
                unmatched.append(entity)
        if unmatched and embedder is not None:
            values = [str(v) for v in arguments.values() if isinstance(v, str | int | float)]
            unmatched = [
                e for e in unmatched if not _similar(embedder, e, values, ENTITY_SIMILARITY)
            ]
    result_words = _result_words(result)
    missing = [
        name for name in requested_fields(request) if not (FIELD_GROUPS[name][1] & result_words)
    ]
    if missing and embedder is not None:
        keys = list(_result_keys(result))
        found = [m for m in missing if _similar(embedder, m, keys, FIELD_SIMILARITY)]
        notes += [f"{m} matched a result field by meaning" for m in found]
        missing = [m for m in missing if m not in found]
    if _ORDINAL.search(request) and _is_list(result):
        notes.append("asks about an item of the listed result")
    if unmatched:
        return Coverage(
            False,
            f"the request mentions {', '.join(unmatched)}, not in the cached call "
            f"({_short(argument_text)})",
            tuple(unmatched),
            tuple(missing),
        )
    if missing:
        return Coverage(False, f"the cached result has no {', '.join(missing)}", (), tuple(missing))
    reason = "the cached result covers the request's entities and fields"
    return Coverage(True, "; ".join([reason, *notes]), notes=tuple(notes))


def _comparable_times(request: str, result: str) -> bool:
    """Whether a day, month or date in the request can be settled against the result: a
    comparison ("by Friday", "before 6pm") with a time in the result, or several dates in the
    result (a list or range to pick from)."""
    if read_request(request).comparison and _TIME_VALUE.search(result):
        return True
    return len(set(_ISO_DATE.findall(result))) > 1


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _argument_vocabulary(arguments: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(JSON text, words of the keys) of a call's arguments."""
    text = json.dumps(arguments, ensure_ascii=False, default=str)
    return text, tuple(w for key in arguments for w in words(str(key)))


_ARGUMENTS: IdentityMemo[tuple[str, tuple[str, ...]]] = IdentityMemo(_CACHE_MAX)


@functools.lru_cache(maxsize=_CACHE_MAX)
def _slots(spec_slots: tuple[str, ...], argument_slots: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({*spec_slots, *argument_slots}))


ENTITY_SIMILARITY = 0.8  # MiniLM cosine: "NYC" ~ "New York"; different cities stay below
FIELD_SIMILARITY = 0.7  # MiniLM cosine of an attribute and a result key ("parking" ~ "car park")


def _similar(embedder: Embedder, text: str, candidates: list[str], threshold: float) -> bool:
    if not candidates:
        return False
    vectors = np.asarray(embedder.embed([text, *candidates]))
    return bool((vectors[1:] @ vectors[0]).max() >= threshold)


@functools.lru_cache(maxsize=_CACHE_MAX)
def _result_keys(result: str) -> tuple[str, ...]:
    """The keys of a JSON result (nested ones too), as words ("estimated_delivery" ->
    "estimated delivery")."""
    keys: dict[str, None] = {}

    def walk(value: Any, depth: int) -> None:
        if depth > 3:
            return
        if isinstance(value, Mapping):
            for key, inner in value.items():
                keys[" ".join(words(str(key)))] = None
                walk(inner, depth + 1)
        elif isinstance(value, list) and value:
            walk(value[0], depth + 1)

    walk(parse_json(result), 0)
    return tuple(k for k in keys if k)


@functools.lru_cache(maxsize=_CACHE_MAX)
def _is_list(result: str) -> bool:
    value = parse_json(result)
    if isinstance(value, list):
        return len(value) > 1
    if isinstance(value, Mapping):
        return any(isinstance(v, list) and len(v) > 1 for v in value.values())
    return False


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
