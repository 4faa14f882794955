"""Which tool a request is about, and the words of a tool's cached exchange.

Tool relevance (the advisor's rule): request words (minus common words) in the tool's name
count `NAME_SCORE`, in its description or parameters `DESCRIPTION_SCORE`, in the arguments or
content of its cached exchange `EXCHANGE_SCORE`; ties go to the tool whose kind fits the
request, then to the tool listed first. A request to act considers only the tools that can act
(`acting_tools`). With no score above zero: a single tool is that tool; else the nearest by
embedding when there is an embedder; else the most recently called tool (a follow-up such as
"And in Berlin?"); else the first listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memory.temporal.chat import Chat, ToolResult
from memory.temporal.coverage import COMMON_WORDS
from memory.temporal.cues import ACT_VERBS, GENERIC_DO, RequestCues, wants_action
from memory.temporal.horizons import (
    Embedder,
    HorizonEstimate,
    ToolSpec,
    spec_text_fields,
    words,
)
from memory.temporal.tool_kinds import ToolNature

NAME_SCORE = 2
DESCRIPTION_SCORE = 1
EXCHANGE_SCORE = 1


@dataclass(frozen=True)
class ToolEntry:
    """What the advisor keeps per tool spec (cached by the spec's digest)."""

    spec: ToolSpec
    horizon: HorizonEstimate
    nature: ToolNature
    name_words: frozenset[str]
    description_words: frozenset[str]


def select_tool(
    chat: Chat,
    request: str,
    cues: RequestCues,
    entries: list[ToolEntry],
    embedder: Embedder | None = None,
) -> ToolEntry | None:
    """The tool relevant to `request` (see this module's docstring), or None."""
    if not entries:
        return None
    request_words = frozenset(words(request)) - COMMON_WORDS
    acting = acting_tools(cues, entries)
    if acting:  # "book the 3:20": a tool that acts, not the lookup that listed the slots
        entries = acting
    best, best_key = entries[0], (0, False)
    for entry in entries:
        score = NAME_SCORE * len(request_words & entry.name_words)
        score += DESCRIPTION_SCORE * len(request_words & entry.description_words)
        result = chat.last_result(entry.spec.name)
        if result is not None:
            score += EXCHANGE_SCORE * len(request_words & exchange_words(result))
        fits = entry.nature.is_action == wants_action(cues, entry.nature.verbs)
        if score > 0 and (score, fits) > best_key:
            best, best_key = entry, (score, fits)
    if best_key[0] > 0 or len(entries) == 1:
        return best
    if embedder is not None:
        return _nearest_by_embedding(embedder, request, entries)
    called = chat.called_tools()
    by_name = {entry.spec.name: entry for entry in entries}
    recent = [(call.index, by_name[name]) for name, call in called.items() if name in by_name]
    if recent:  # a follow-up such as "And in Berlin?"
        return max(recent, key=lambda pair: pair[0])[1]
    return None if cues.closing else entries[0]  # nothing cached: any tool is a call


def _nearest_by_embedding(embedder: Embedder, request: str, entries: list[ToolEntry]) -> ToolEntry:
    texts = [request] + [": ".join(spec_text_fields(e.spec)) for e in entries]
    vectors = np.asarray(embedder.embed(texts))
    similarity = vectors[1:] @ vectors[0]
    return entries[int(np.argmax(similarity))]


_EXCHANGE_WORDS: dict[str, frozenset[str]] = {}
_EXCHANGE_WORDS_MAX = 4096  # bounded; a conversation's cached exchange is re-read every decision


def acting_tools(cues: RequestCues, entries: list[ToolEntry]) -> list[ToolEntry]:
    """For a request to act, the tools that can do it: action tools whose verbs fit, else any
    action tool, else tools named after the requested verb ("enroll" -> "enrollment")."""
    if cues.question or not cues.requested_verbs & ACT_VERBS:
        return []
    actions = [e for e in entries if e.nature.is_action]
    fitting = [e for e in actions if cues.requested_verbs & e.nature.verbs]
    if fitting or actions:
        return fitting or actions
    stems = {v[:5] for v in cues.requested_verbs - GENERIC_DO if len(v) >= 4}
    return [e for e in entries if any(w[:5] in stems for w in e.name_words if len(w) >= 4)]


def names_a_cached_argument(chat: Chat, request: str) -> bool:
    """Whether the request names a value an earlier tool call was made with ("why is Oslo so
    warm?" after get_weather(city=Oslo) is about the cached data, not general knowledge)."""
    request_words = frozenset(words(request)) - COMMON_WORDS
    for call in chat.called_tools().values():
        values = " ".join(str(v) for v in call.arguments.values())
        if request_words & (frozenset(words(values)) - COMMON_WORDS):
            return True
    return False


def exchange_words(result: ToolResult) -> frozenset[str]:
    """Words of a tool's cached exchange (its call's arguments and its result)."""
    arguments = " ".join(f"{k} {v}" for k, v in result.arguments.items())
    text = f"{arguments} {result.text}"
    hit = _EXCHANGE_WORDS.get(text)
    if hit is None:
        hit = frozenset(words(text)) - COMMON_WORDS
        if len(_EXCHANGE_WORDS) >= _EXCHANGE_WORDS_MAX:
            _EXCHANGE_WORDS.clear()
        _EXCHANGE_WORDS[text] = hit
    return hit


def exchange_texts(chat: Chat, result: ToolResult, proposal: bool = False) -> list[str]:
    """Texts of the exchange around a cached result: from the user message that led to the
    call up to the next user message (not including the request being advised on, nor the
    proposal a "yes" accepts)."""
    start = result.call.index if result.call is not None else result.index
    turns = chat.turns
    while start > 0 and turns[start].role != "user":
        start -= 1
    end = len(turns) if chat.last_request is None else chat.last_request
    if proposal:
        end = next((i for i in range(end - 1, -1, -1) if turns[i].role == "assistant"), end)
    texts = []
    for index in range(start, end):
        if index > result.index and turns[index].role == "user":
            break
        texts.append(turns[index].text)
    return texts
