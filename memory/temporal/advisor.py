"""ToolCallAdvisor: should the agent call a tool for the user's new request, or answer from the
result it already has? The host decides from what the tools do, how their last calls ended,
what the user asks, elapsed time, freshness horizons and coverage (TicToc: models cannot do this
from timestamps).

Decision rule, for the tool relevant to the last user message, first match wins:

1. no user request, or only a closing remark ("thanks") -> answer (`no_request`, `closing`);
   a general question (knowledge, advice, writing; `cues.RequestCues.general`) that names no
   argument of a cached call -> answer (`general_question`);
2. an action tool (create, book, send, ...) and a request to do, redo or confirm it -> call
   (`action_request`), whatever the age of its last result;
3. no earlier result -> call (`no_result`);
4. the last result failed (error, refusal, overloaded, timeout, empty) -> call again
   (`retry_after_failure`), unless the user asks about the failure (`failure_explained`);
5. an explicit freshness request ("check again", "is it still", "any update") -> call
   (`freshness_request`);
6. the user asks what the earlier result said ("remind me", "when we checked") -> answer
   (`recall`);
7. no cached result covers the request (entities, fields; a time the result can be compared
   with and an item of a listed result count as covered; the X of "what about X?" must appear
   in the cached exchange) -> call (`not_covered`);
8. an action tool asked about what it did -> answer from its record (`action_record`), unless
   the record shows the action still in progress ("pending"): then its age decides, as below;
9. the result's age against its horizon -> call past it (`past_horizon`), else answer
   (`within_horizon`); a total, rate or what-if over the shown data (`cues.derived`) is
   answered up to `REASONING_GRACE_S` past a horizon inferred from words. The horizon is the
   one the result declares (Cache-Control, ttl, expires_at), else the tool spec's declared one,
   else one learned from re-calls (Gamma-Poisson, `rates.ChangeRateModel`), else the inferred
   one (description, lexicon, MiniLM); a tracked process in a final state ("delivered") keeps
   for days. Without any times, tools whose horizon is under `NO_TIMES_CALL_BELOW_S` are called
   and others answered.

Tool relevance (`tool_choice.select_tool`): request words in a tool's name, description and
cached exchange, with a request to act sent to a tool that acts. A short "yes, go ahead" after
the assistant proposed something is read together with that proposal.

Never raises on a chat (see `chat.read_chat` for the shapes read); `Decision.signals` names
every cue seen and `Decision.reason` says what had to be guessed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from memory.clock import Clock
from memory.temporal.chat import Chat, ToolResult, read_chat
from memory.temporal.coverage import COMMON_WORDS, Coverage, check_coverage
from memory.temporal.cues import RequestCues, read_request, wants_action
from memory.temporal.horizons import (
    CLASS_HORIZON_S,
    Embedder,
    HorizonEstimate,
    HorizonResolver,
    ToolSpec,
    Volatility,
    as_tool_spec,
    closest_class,
    spec_text_fields,
    stable_digest,
    words,
)
from memory.temporal.memo import IdentityMemo
from memory.temporal.rates import (
    ChangeRateModel,
    Evidence,
    Interval,
    arguments_key,
    chat_intervals,
)
from memory.temporal.results import (
    ResultStatus,
    declared_freshness,
    in_progress,
    result_status,
    terminal_state,
)
from memory.temporal.signals import ElapsedSignals, humanize_duration
from memory.temporal.tool_choice import (
    ToolEntry,
    exchange_texts,
    exchange_words,
    names_a_cached_argument,
    select_tool,
)
from memory.temporal.tool_kinds import classify_tool

ToolLike = ToolSpec | Mapping[str, Any] | Callable[..., Any]
NO_TIMES_CALL_BELOW_S = 120.0
TERMINAL_HORIZON_S = CLASS_HORIZON_S[Volatility.DAYS]
# A total, rate or what-if over data the user has just seen is answered from it for this long
# even past a horizon inferred from the tool's words (never past a declared or learned one).
REASONING_GRACE_S = 30 * 60.0
_PROPOSAL = re.compile(
    r"\b(?:shall|should|can|may) i\b|\bwould you like\b|\bdo you want\b|\b(?:want|like) me to\b|"
    r"\bconfirm\b|\bproceed\b|\bgo ahead\b|\bok(?:ay)? to\b|\bsound good\b|\bwould that work\b|"
    r"\bis that (?:ok|okay|alright|fine)\b",
    re.IGNORECASE,
)


class ReasonCode(StrEnum):
    """The rule that decided (see the module docstring)."""

    NO_REQUEST = "no_request"
    CLOSING = "closing"
    NO_TOOL = "no_tool"
    GENERAL_QUESTION = "general_question"
    RECALL = "recall"
    ACTION_REQUEST = "action_request"
    NO_RESULT = "no_result"
    RETRY_AFTER_FAILURE = "retry_after_failure"
    FAILURE_EXPLAINED = "failure_explained"
    FRESHNESS_REQUEST = "freshness_request"
    NOT_COVERED = "not_covered"
    ACTION_RECORD = "action_record"
    PAST_HORIZON = "past_horizon"
    WITHIN_HORIZON = "within_horizon"


@dataclass(frozen=True)
class Decision:
    """The advice: call `tool` or answer directly, with the numbers and cues behind it."""

    call_tool: bool
    tool: str | None
    age_s: float | None
    horizon_s: float | None
    coverage: bool | None
    reason: str
    volatility: str | None = None
    horizon_source: str | None = None
    reason_code: str = ""  # a ReasonCode value
    signals: tuple[str, ...] = ()  # every cue seen: "action_tool", "result_timeout", ...
    tool_kind: str | None = None  # "read" | "action"


@dataclass(frozen=True)
class _Horizon:
    seconds: float
    source: str
    volatility: Volatility
    inferred: bool = False  # from the tool's words or a default, not declared or learned


class ToolCallAdvisor:
    """Advises call-or-answer per request; see the module docstring for the rule.

    `tool_specs` declare tools ahead of time (ToolSpec, OpenAI/MCP dicts or `@fresh_for`
    functions); a declared horizon there overrides the same-named tool passed to `decide`.
    `clock` gives "now" when `decide` gets no `now`; without either, the time of the last
    message is now. `rates` keeps change-rate evidence (`rates.state_dict()` is plain JSON for
    a store); with `learn=True` every re-call seen in a decided chat is recorded there (once),
    otherwise a chat's re-calls inform only its own decision. Message and tool dicts are read
    once per object (`memo.IdentityMemo`): replace a dict rather than edit it deep in place.
    """

    def __init__(
        self,
        tool_specs: Iterable[ToolLike] | None = None,
        embedder: Embedder | None = None,
        clock: Clock | None = None,
        max_cache: int = 4096,
        rates: ChangeRateModel | None = None,
        learn: bool = False,
    ) -> None:
        self.embedder = embedder
        self.clock = clock
        self.max_cache = max_cache
        self.rates = rates if rates is not None else ChangeRateModel()
        self.learn = learn
        self.resolver = HorizonResolver(embedder=embedder, max_cache=max_cache)
        self._entries: dict[str, ToolEntry] = {}
        self._declared: dict[str, ToolEntry] = {}
        self._tool_memo: IdentityMemo[ToolEntry] = IdentityMemo(max_cache, nested=True)
        self._spec_memo: dict[int, tuple[ToolSpec, ToolEntry]] = {}
        self._learned: dict[tuple[float, float, float, float], float] = {}
        for tool in tool_specs or ():
            entry = self._entry(tool)
            self._declared[entry.spec.name] = entry

    def decide(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None = None,
        now: float | str | datetime | None = None,
    ) -> Decision:
        """Advice for the last user message of `messages`, given the available `tools`."""
        clock = None if now is not None else self.clock
        return self._decide(read_chat(messages, now=now, clock=clock), tools)

    def decide_from(
        self,
        signals: ElapsedSignals,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None = None,
    ) -> Decision:
        """`decide` at the `now` of already computed `elapsed_signals` (for callers that need
        them too, such as `inject_time`)."""
        return self._decide(read_chat(messages, now=signals.now), tools)

    def ttl_decision(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[ToolLike] | None,
        ttl_s: float,
    ) -> bool:
        """The fixed-TTL baseline: same tool choice, one TTL, no coverage check."""
        chat = read_chat(messages)
        if chat.last_request is None:
            return False
        request, cues = self._request(chat)
        entry = select_tool(chat, request, cues, self._available(tools, []), self.embedder)
        if entry is None:
            return False
        result = chat.last_result(entry.spec.name)
        age = None if result is None else chat.age(result.index)
        return age is None or age > ttl_s

    def horizon(self, tool: ToolLike) -> HorizonEstimate:
        """The (declared or inferred) horizon the advisor uses for `tool` before evidence."""
        return self._entry(tool).horizon

    # ---------------------------------------------------------------- the rule

    def _decide(self, chat: Chat, tools: Sequence[ToolLike] | None) -> Decision:
        seen: list[str] = sorted(chat.flags)
        notes = list(chat.notes)
        if chat.last_request is None:
            return _answer_only("no user message to advise on", ReasonCode.NO_REQUEST, seen, notes)
        request, cues = self._request(chat)
        seen += _cue_names(cues)
        if cues.general and not wants_action(cues) and not names_a_cached_argument(chat, request):
            return _answer_only(
                "a general question (knowledge, advice or writing): no tool's data needed",
                ReasonCode.GENERAL_QUESTION, seen, notes,
            )  # fmt: skip
        entry = select_tool(chat, request, cues, self._available(tools, seen), self.embedder)
        if entry is None:
            return _answer_only("no available tool is relevant", ReasonCode.NO_TOOL, seen, notes)
        return _Judgement(self, chat, request, cues, entry, seen, notes).decide()

    @staticmethod
    def _request(chat: Chat) -> tuple[str, RequestCues]:
        """The request's text and cues; a "yes" to a proposal is read with the proposal."""
        assert chat.last_request is not None
        request = chat.turns[chat.last_request].text
        cues = read_request(request)
        if not cues.affirmation:
            return request, cues
        proposal = chat.text_before(chat.last_request, "assistant")
        if not _PROPOSAL.search(proposal):
            return request, replace(cues, affirmation=False)
        proposed = read_request(proposal)
        return f"{request} {proposal}", replace(
            cues, freshness=cues.freshness or proposed.freshness
        )

    # ---------------------------------------------------------------- tools

    def _available(self, tools: Sequence[ToolLike] | None, seen: list[str]) -> list[ToolEntry]:
        if tools is None:
            return list(self._declared.values())
        entries = []
        for tool in tools:
            try:
                entry = self._entry(tool)
            except (ValueError, TypeError, AttributeError):
                seen.append("tool_spec_unreadable")
                continue
            declared = self._declared.get(entry.spec.name)
            entries.append(declared if declared is not None and declared.spec.horizon_s else entry)
        return entries

    def _entry(self, tool: ToolLike) -> ToolEntry:
        if isinstance(tool, dict | Mapping):  # the same spec dict comes with every decision
            return self._tool_memo.get(tool, self._entry_of)
        if isinstance(tool, ToolSpec):  # frozen: safe to remember by identity
            hit = self._spec_memo.get(id(tool))
            if hit is None or hit[0] is not tool:
                if len(self._spec_memo) >= self.max_cache:
                    self._spec_memo.clear()
                hit = self._spec_memo[id(tool)] = (tool, self._entry_of(tool))
            return hit[1]
        return self._entry_of(tool)

    def _entry_of(self, tool: ToolLike) -> ToolEntry:
        # A ToolSpec or tool function is converted once: its digest keys both caches.
        converted = None if isinstance(tool, Mapping) else as_tool_spec(tool)
        key = stable_digest(tool) if converted is None else converted.digest()
        entry = self._entries.get(key)
        if entry is None:
            spec = converted if converted is not None else as_tool_spec(tool)
            name_text, rest = spec_text_fields(spec)
            entry = ToolEntry(
                spec=spec,
                horizon=self.resolver.resolve(spec, digest=None if converted is None else key),
                nature=classify_tool(spec),
                name_words=frozenset(words(name_text)) - COMMON_WORDS,
                description_words=frozenset(words(rest)) - COMMON_WORDS,
            )
            if len(self._entries) >= self.max_cache:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry
        return entry

    def _learned_horizon(self, evidence: Evidence, prior_s: float) -> float:
        key = (evidence.changes, evidence.exposure_s, evidence.observations, prior_s)
        hit = self._learned.get(key)
        if hit is None:
            if len(self._learned) >= self.max_cache:
                self._learned.clear()
            hit = self._learned[key] = self.rates.horizon(evidence, prior_s)
        return hit


class _Judgement:
    """One decision in progress: rules 2-9 of the module docstring for the selected tool."""

    def __init__(
        self,
        advisor: ToolCallAdvisor,
        chat: Chat,
        request: str,
        cues: RequestCues,
        entry: ToolEntry,
        seen: list[str],
        notes: list[str],
    ) -> None:
        self.advisor, self.chat, self.request, self.cues = advisor, chat, request, cues
        self.entry = entry
        self.name = entry.spec.name
        self.seen, self.notes = seen, notes
        self.horizon: _Horizon | None = None
        nature = entry.nature
        self.seen.append(f"{nature.kind.value}_tool")
        self.seen += ["destructive"] * bool(nature.destructive)
        self.seen += ["idempotent"] * bool(nature.idempotent)
        self.seen += ["annotated"] * (nature.source == "annotations")

    def decide(self) -> Decision:
        name, cues, nature, chat = self.name, self.cues, self.entry.nature, self.chat
        if cues.closing and not cues.affirmation:
            return self._out(
                False, None, None, "a closing remark: nothing to look up", ReasonCode.CLOSING
            )
        if nature.is_action and wants_action(cues, nature.verbs):
            what = "confirmation of" if cues.affirmation else "request to do"
            return self._out(
                True, None, None, f"{name} changes the world and this is a {what} it",
                ReasonCode.ACTION_REQUEST,
            )  # fmt: skip
        last = chat.last_result(name)
        if last is None:
            return self._out(True, None, None, f"no earlier {name} result", ReasonCode.NO_RESULT)
        status = result_status(last.text, last.flagged_error)
        age = chat.age(last.index)
        if status is not ResultStatus.OK:
            self.seen.append(f"result_{status.value}")
            if cues.about_failure or (nature.is_action and cues.question):
                return self._out(
                    False, age, True, f"the user asks about the failed {name} call ({status})",
                    ReasonCode.FAILURE_EXPLAINED,
                )  # fmt: skip
            return self._out(
                True, age, None, f"the last {name} call ended {status.value}: call it again",
                ReasonCode.RETRY_AFTER_FAILURE,
            )  # fmt: skip
        if cues.freshness:
            return self._out(
                True, age, None, f"the user asks for a fresh look ({cues.freshness!r})",
                ReasonCode.FRESHNESS_REQUEST,
            )  # fmt: skip
        if cues.recall and not nature.is_action:
            return self._out(
                False, age, True, f"the user asks what the earlier {name} result said",
                ReasonCode.RECALL,
            )  # fmt: skip
        subject = frozenset(words(cues.subject or "")) - COMMON_WORDS
        if subject and not subject & exchange_words(last):
            return self._out(
                True, age, False,
                f"the user asks about {cues.subject!r}, which the cached {name} exchange never "
                "mentions", ReasonCode.NOT_COVERED,
            )  # fmt: skip
        result, coverage = self._covering_result(last)
        age = chat.age(result.index)
        if not coverage.covered:
            return self._out(
                True, age, False,
                f"the cached {name} result does not cover the request: {coverage.reason}",
                ReasonCode.NOT_COVERED,
            )  # fmt: skip
        self.notes += coverage.notes
        if nature.is_action and not in_progress(result.text):
            return self._out(
                False, age, True, f"the question is about what {name} did: its result records it",
                ReasonCode.ACTION_RECORD,
            )  # fmt: skip
        return self._by_horizon(result, age)

    def _by_horizon(self, result: ToolResult, age: float | None) -> Decision:
        horizon = self.horizon = self._horizon_of(result)
        text = (
            f"{humanize_duration(horizon.seconds)} horizon ({horizon.volatility}, {horizon.source})"
        )
        name = self.name
        if age is None:
            call = horizon.seconds < NO_TIMES_CALL_BELOW_S
            verdict = "call it again" if call else "answer from it"
            return self._out(
                call, None, True, f"no times to age the {name} result; its {text}: {verdict}",
                ReasonCode.PAST_HORIZON if call else ReasonCode.WITHIN_HORIZON,
            )  # fmt: skip
        if (
            self.cues.derived
            and horizon.inferred
            and age <= max(horizon.seconds, REASONING_GRACE_S)
        ):
            return self._out(
                False, age, True,
                f"the {name} result is {humanize_duration(age)} old and the request reasons over "
                f"it (a total, a rate, a what-if): within {humanize_duration(REASONING_GRACE_S)} "
                f"that data still answers it ({text})",
                ReasonCode.WITHIN_HORIZON,
            )  # fmt: skip
        if age > horizon.seconds:
            old = humanize_duration(age)
            return self._out(
                True, age, True, f"the {name} result is {old} old, past its {text}",
                ReasonCode.PAST_HORIZON,
            )  # fmt: skip
        return self._out(
            False, age, True,
            f"the {name} result is {humanize_duration(age)} old, within its {text}, and covers "
            "the request: answer from it",
            ReasonCode.WITHIN_HORIZON,
        )  # fmt: skip

    def _covering_result(self, last: ToolResult) -> tuple[ToolResult, Coverage]:
        """The newest successful result of the tool that covers the request (else the last)."""
        first: Coverage | None = None
        for result in reversed(self.chat.results(self.name)):
            if (
                result is not last
                and result_status(result.text, result.flagged_error) is not ResultStatus.OK
            ):
                continue
            coverage = self._coverage(result)
            if coverage.covered:
                return result, coverage
            first = first or coverage
            if not coverage.unmatched_entities:
                break  # an older result of the same call would miss the same fields
        assert first is not None
        return last, first

    def _coverage(self, result: ToolResult) -> Coverage:
        chat = self.chat
        return check_coverage(
            self.request,
            result.arguments,
            result.text,
            context=exchange_texts(chat, result, proposal=self.cues.affirmation),
            tool=self.entry.spec,
            embedder=self.advisor.embedder,
        )

    def _horizon_of(self, result: ToolResult) -> _Horizon:
        """Declared by the result, else by the spec, else learned, else inferred."""
        declared = declared_freshness(result.text, result.extra)
        if declared is not None:
            seconds = declared.horizon_s(self.chat.times[result.index])
            if seconds is not None:
                self.seen.append("horizon_declared_by_result")
                return _Horizon(seconds, f"result: {declared.source}", closest_class(seconds))
        base = self.entry.horizon
        if base.source == "declared":
            return _Horizon(base.horizon_s, base.source, base.volatility)
        horizon = _Horizon(base.horizon_s, base.source, base.volatility, inferred=True)
        evidence = self._evidence(result)
        if evidence.observations > 0:
            seconds = self.advisor._learned_horizon(evidence, base.horizon_s)
            self.seen.append("horizon_learned")
            source = f"learned from {evidence.observations:g} re-calls"
            horizon = _Horizon(seconds, source, closest_class(seconds))
        state = terminal_state(result.text)
        if state is not None and horizon.seconds < TERMINAL_HORIZON_S:
            self.seen.append("terminal_state")
            horizon = _Horizon(TERMINAL_HORIZON_S, f"final state {state!r}", Volatility.DAYS)
        return horizon

    def _evidence(self, result: ToolResult) -> Evidence:
        advisor, chat = self.advisor, self.chat
        intervals: list[Interval] = []
        if any(len(found) > 1 for found in chat.all_results().values()):
            intervals = chat_intervals(chat)
        if advisor.learn:
            advisor.rates.record_all(intervals)
            intervals = []
        if not intervals and not advisor.rates.knows(self.name):
            return Evidence()
        return advisor.rates.evidence(self.name, arguments_key(result.arguments), intervals)

    def _out(
        self, call: bool, age: float | None, covered: bool | None, reason: str, code: str
    ) -> Decision:
        horizon = self.horizon
        estimate = self.entry.horizon
        return Decision(
            call_tool=call,
            tool=self.name,
            age_s=age,
            horizon_s=horizon.seconds if horizon else estimate.horizon_s,
            coverage=covered,
            reason=_with_notes(reason, self.notes),
            volatility=(horizon.volatility if horizon else estimate.volatility).value,
            horizon_source=horizon.source if horizon else estimate.source,
            reason_code=str(code),
            signals=tuple(dict.fromkeys(self.seen)),
            tool_kind=self.entry.nature.kind.value,
        )


def _answer_only(reason: str, code: ReasonCode, seen: list[str], notes: list[str]) -> Decision:
    return Decision(
        False, None, None, None, None, _with_notes(reason, notes), reason_code=code.value,
        signals=tuple(dict.fromkeys(seen)),
    )  # fmt: skip


def _with_notes(reason: str, notes: list[str]) -> str:
    return reason if not notes else f"{reason} ({'; '.join(dict.fromkeys(notes))})"


def _cue_names(cues: RequestCues) -> list[str]:
    names = [
        ("freshness_request", cues.freshness is not None),
        ("affirmation", cues.affirmation),
        ("question", cues.question),
        ("redo", cues.redo),
        ("about_failure", cues.about_failure),
        ("comparison", cues.comparison),
        ("closing", cues.closing),
        ("general_question", cues.general),
        ("recall", cues.recall),
        ("derived", cues.derived),
    ]
    return [name for name, present in names if present]
