"""What the user's new turn asks for beyond its topic: a fresh look, an action done (or done
again), an explanation of a failure, a comparison, or nothing at all (a closing "thanks").

Rules of English any agent host meets, not fitted to data:

- **Freshness**: "check again", "refresh", "re-check", "double-check", "verify", "confirm",
  "make sure", "check if", "still", "any update", "anything new", "has it changed", "right now",
  "at the moment", "up to date", "latest", "most recent", "... now?" at the end, "yet" in a
  question.
- **Requests to act**: sentences are split; leading interjections ("ok", "great", "and",
  "now", "also", "yes", ...) are skipped; an imperative's first word, the verb after "can /
  could / would / will you" or "please", or after "I'd like to / I want to / I need to /
  let's", is a requested verb; a verb asking for information ("tell", "show", "find", "check")
  makes the sentence a question instead. "again", "another", "one more", "N more", "instead",
  "same again", "also", "too" mark a redo. A sentence starting with a question word or an
  auxiliary ("did", "is", "what", ...) or ending in "?" (other than a polite request) is a
  question.
- **Affirmation**: a short turn starting "yes", "sure", "ok", "go ahead", "do it", "proceed"
  (the advisor counts it only after the assistant proposed something).
- **About a failure**: "why did it fail", "what was the error", "what went wrong".
- **General question**: knowledge, advice or writing that no tool's data answers: "what's a",
  "what does ... mean", "the difference between", "why does ..." (not "why is the/my ..."),
  "how do you/people ...", "how does ... work", "explain", "who was", "tips", "is it ok/safe/
  normal to", "should I", "help me write", "in general", "how do you say". Words that point at
  the user's live world ("current", "today", "status", "my order", "left", ...) veto it; the
  advisor also vetoes it when the turn names an argument of a cached call.
- **Recall**: "remind me", "when we checked", "you said", "at the time", "that day": the user
  asks what the earlier result said, which a new call would not tell.
- **Derived**: arithmetic or a hypothetical over the data already shown ("in total", "per day",
  "what percent", "work out to", "bigger than", "if I ..., which/would/is ..."): answerable by
  reasoning while the data is not long stale.
- **Follow-up subject**: "what about X?", "how about X?", "and X?": X is what the turn asks
  about (the advisor calls when the cached exchange never mentions it).
- **Comparison**: "by", "before", "after", "until", "in time", "than", "cheapest", "earliest",
  "which one", ...: the question may be settled by reasoning over the cached result.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from memory.temporal.horizons import wordset
from memory.temporal.tool_kinds import ACTION_VERBS, READ_VERBS, verb

INTERJECTIONS = wordset(
    """ok okay great thanks thank you cool perfect nice alright right so and but also then now
    actually well hmm oh hey hi hello yes yeah yep yup no nope wait sorry fine sure awesome
    good excellent lovely hm um uh just kindly ah brilliant wonderful cheers oops"""
)
CLOSING_WORDS = INTERJECTIONS | wordset(
    "got it bye goodbye that's thats all sounds worries np ty thx much appreciated"
)
QUESTION_STARTS = wordset(
    """what what's whats which when where who whom whose why how how's did didn't was wasn't
    were weren't has hasn't have haven't had is isn't are aren't does doesn't do don't am will
    won't shall should can could may might would"""
)
POLITE_MODALS = frozenset({"can", "could", "would", "will"})
YOU = frozenset({"you", "u", "ya"})
SUBJECTS = frozenset({"i", "you", "we", "they", "he", "she", "u", "these", "those"})
DESIRES = (
    ("i", "want", "to"),
    ("i", "need", "to"),
    ("i'd", "like", "to"),
    ("i", "would", "like", "to"),
    ("we", "want", "to"),
    ("we", "need", "to"),
    ("we'd", "like", "to"),
    ("let's",),
    ("lets",),
    ("let", "us"),
)
INFO_VERBS = READ_VERBS | wordset("tell show give remind explain say know see describe")
GENERIC_DO = frozenset({"do", "try", "make", "go", "proceed", "redo", "retry", "repeat"})
ACT_VERBS = ACTION_VERBS | GENERIC_DO
AFFIRMATIONS = (
    "yes",
    "yeah",
    "yep",
    "yup",
    "sure",
    "ok",
    "okay",
    "go ahead",
    "do it",
    "do that",
    "please do",
    "proceed",
    "confirmed",
    "absolutely",
    "definitely",
    "let's do it",
    "sounds good",
    "that works",
)
AFFIRMATION_MAX_WORDS = 8

_FRESHNESS = re.compile(
    r"\b(?:check|look|search|query|fetch|pull|get|grab|load|run|call|try|ask|poll)\b(?:\s+[\w']+){0,3}?\s+again\b|"
    r"\brefresh\w*|\bre-?check\w*|\bdouble[- ]?check\w*|\b(?:re-?)?verify\b|\bconfirm\b|"
    r"\bmake sure\b|\bcheck (?:if|whether|that|on)\b|\bstill\b|"
    r"\bany (?:more )?(?:updates?|news|changes?|progress)\b|\banything (?:new|changed)\b|"
    r"\b(?:an|the latest) update\b|\b(?:has|have) (?:it|that|this|anything|something|they) "
    r"changed\b|\bdid (?:it|that|this|anything|they) change\b|"
    r"\bchanged since\b|\bright now\b|\bat the moment\b|\bas of now\b|"
    r"\bat this (?:very )?(?:moment|minute|point)\b|\bup[- ]to[- ]date\b|\blatest\b|"
    r"\bmost recent\b|\bnow\s*[?!.]*\s*$|\bnow\s*\?"
)
_YET_QUESTION = re.compile(r"\byet\b[^.!]*\?")
_REDO = re.compile(
    r"\bagain\b|\banother\b|\b(?:one|two|three|four|five|six|\d+|a few|some) more\b|"
    r"\binstead\b|\bsame (?:again|thing|as before)\b|\bre-?(?:do|try|send|book|run|submit)\b|"
    r"\balso\b|\btoo\s*[.!?]*\s*$|,\s*too\b|\bas well\b"
)
_ABOUT_FAILURE = re.compile(
    r"\bwhy\b[^?]*\b(?:fail\w*|error\w*|wrong|not work\w*|didn't|did not|couldn't|could not|"
    r"rejected|declined|denied|refused|empty|nothing)\b|"
    r"\bwhat (?:was|is|were) the (?:error|problem|issue|reason|failure)\b|\bwhat went wrong\b|"
    r"\b(?:error|failure) (?:message|code|reason|details?)\b"
)
_COMPARISON = re.compile(
    r"\b(?:by|before|after|until|till|in time|on time|earlier|later|sooner|than|within|enough|"
    r"at least|at most|cheapest|fastest|earliest|nearest|closest|cheaper|faster|shortest|"
    r"longest|highest|lowest|best|worst|which one|which of|first|second|third|last|next)\b"
)
_GENERAL = re.compile(
    r"\bwhat(?:'s| is| are) (?:a|an|some|the difference|the point|the purpose|the best way|"
    r"the usual|the typical|a good|a typical)\b|\bwhat (?:does|do) [\w' -]+ mean\b|"
    r"\bdifference between\b|"
    r"\bwhy (?:do|does|is|are|would|can|did|should) (?!the\b|this\b|that\b|these\b|those\b|"
    r"it\b|my\b|our\b|your\b|there\b|mine\b|he\b|she\b|they\b)|"
    r"\bhow (?:do|does|can|should|would) (?:you|i|one|people|teams|someone|anyone|a|an)\b|"
    r"\bhow (?:do|does) [\w' -]+ (?:form|work|happen|differ|compare)\b|"
    r"^(?:\w+ )?explain\b|\bwho (?:was|were|invented|wrote|discovered|founded)\b|"
    r"\btips?\b|\bis it (?:ok|okay|safe|normal|smart|bad|good|wise|worth|true|common|legal|rude|"
    r"polite|healthy|better)\b|\bshould i\b|\bwhat should i\b|\bwhen should\b|"
    r"\bhelp me (?:write|draft|word|phrase|compose|understand)\b|"
    r"^(?:\w+ )?(?:write|draft|compose) (?:a|an|me)\b|\bwhat (?:kind|type|sort)s? of\b|"
    r"\bin general\b|\bgenerally\b|\btypically\b|\busually\b|\broughly how\b|"
    r"\bhow do you (?:say|spell|pronounce)\b"
)
_LIVE_WORLD = re.compile(
    r"\b(?:current(?:ly)?|today|tonight|tomorrow|yesterday|this (?:morning|afternoon|evening|"
    r"week|month|year)|status|left|remaining|available|availability|open|closed|my (?:order|"
    r"account|booking|reservation|ticket|balance|request|claim|package|delivery|appointment|"
    r"application|case|bill|plan|subscription)|our (?:order|account|booking|build|deploy|"
    r"cluster|server|site|store|system)|price|prices|cost|costs|how (?:much|many) (?!\w+ did))\b"
)
_RECALL = re.compile(
    r"\bremind me\b|\bwhen (?:we|you|i) (?:checked|looked|asked)\b|\byou (?:said|told|mentioned|"
    r"showed)\b|\bat the time\b|\bthat day\b|\bback then\b|\bwhat did (?:it|you|that) say\b"
)
_DERIVED = re.compile(
    r"\bin total\b|\baltogether\b|\bcombined\b|\bsum\b|\baverage\b|\bpercent\w*\b|%|"
    r"\bper (?:day|night|hour|week|month|person|head|unit|item)\b|\bwork(?:s)? out (?:to|at)\b|"
    r"\b(?:bigger|smaller|larger|higher|lower|more|less|longer|shorter|cheaper|dearer) than\b|"
    r"\bhow (?:much|many|long|far) (?:would|will|is that|does that)\b|\bwould (?:that|it|i) be\b|"
    r"\bif i\b[^?]*\b(?:which|would|will|is|can|could|do|does)\b|\bhow far apart\b|"
    r"\bwhy(?:'s| is| are) the (?:first|second|third|last|other)\b|\bthe (?:first|second|other) "
    r"one\b|\bin (?:euros?|dollars?|pounds?|usd|eur|gbp|percent)\b"
)
_SUBJECT = re.compile(
    r"^(?:(?:ok|okay|and|so|also|now|hmm|great|thanks|cool)[,!.]?\s+)*(?:(?:what|how) about|and)\s+"
    r"(?P<subject>[^?.!]+?)\s*(?:\?|[.!]|$)"
)
_SENTENCES = re.compile(r"(?<=[.?!;])\s+|\n+")
_TOKENS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class RequestCues:
    """The cues of one user turn (see the module docstring)."""

    freshness: str | None = None  # the phrase that asks for a fresh look
    affirmation: bool = False
    question: bool = False
    requested_verbs: frozenset[str] = frozenset()  # verbs the user asks to be done
    redo: bool = False
    about_failure: bool = False
    comparison: bool = False
    closing: bool = False
    general: bool = False  # knowledge, advice or writing: no tool's data needed
    recall: bool = False  # what did the earlier result say
    derived: bool = False  # arithmetic or a hypothetical over the shown data
    subject: str | None = None  # X of "what about X?"


def wants_action(cues: RequestCues, tool_verbs: frozenset[str] = frozenset()) -> bool:
    """Whether the turn asks to do (or redo, or confirm) an action of a tool with these verbs."""
    if cues.affirmation:
        return True
    if cues.requested_verbs and (
        cues.requested_verbs & ACT_VERBS or cues.requested_verbs & tool_verbs
    ):
        return True
    return cues.redo and not cues.question


@functools.lru_cache(maxsize=4096)
def read_request(text: str) -> RequestCues:
    """The cues of a user turn (cached per text)."""
    lowered = text.lower().replace("\u2019", "'").strip()
    freshness = _FRESHNESS.search(lowered) or _YET_QUESTION.search(lowered)
    question = False
    verbs: set[str] = set()
    for sentence in _SENTENCES.split(lowered):
        tokens = _TOKENS.findall(sentence)
        asked, verb_word = _sentence(tokens, sentence.rstrip().endswith("?"))
        question = question or asked
        if verb_word:
            verbs.add(verb(verb_word, ACTION_VERBS) or verb_word)
    tokens = _TOKENS.findall(lowered)
    return RequestCues(
        freshness=freshness.group(0).strip() if freshness else None,
        affirmation=_affirmation(tokens) and not question,
        question=question,
        requested_verbs=frozenset(verbs),
        redo=bool(_REDO.search(lowered)),
        about_failure=bool(_ABOUT_FAILURE.search(lowered)),
        comparison=bool(_COMPARISON.search(lowered)),
        closing=bool(tokens)
        and "?" not in lowered
        and freshness is None
        and all(t in CLOSING_WORDS for t in tokens),
        general=freshness is None
        and bool(_GENERAL.search(lowered))
        and not _LIVE_WORLD.search(lowered),
        recall=bool(_RECALL.search(lowered)),
        derived=freshness is None and question and bool(_DERIVED.search(lowered)),
        subject=subject.group("subject") if (subject := _SUBJECT.match(lowered)) else None,
    )


def _sentence(tokens: list[str], ends_in_question_mark: bool) -> tuple[bool, str | None]:
    """(is a question, the requested verb) of one sentence's tokens."""
    start = 0
    while start < len(tokens) and tokens[start] in INTERJECTIONS and tokens[start] != "please":
        start += 1
    rest = tokens[start:]
    if not rest:
        return False, None
    if rest[0] in POLITE_MODALS and len(rest) > 1 and rest[1] in YOU:
        return _asked(_first_verb(rest[2:]))
    if rest[0] == "please":
        return _asked(_first_verb(rest[1:]))
    for phrase in DESIRES:
        if tuple(rest[: len(phrase)]) == phrase:
            return _asked(_first_verb(rest[len(phrase) :]))
    if rest[0] in ("don't", "dont") or rest[:2] == ["do", "not"]:
        return False, None  # "don't cancel it": nothing to do
    if rest[0] == "do" and (len(rest) < 2 or rest[1] not in SUBJECTS):
        return False, "do"  # "do it again", "do the same for Friday"
    if rest[0] in QUESTION_STARTS or ends_in_question_mark:
        return True, None
    return _asked(rest[0])


def _asked(verb_word: str | None) -> tuple[bool, str | None]:
    """A requested verb; one that asks for information ("tell", "show") makes a question."""
    if verb_word is not None and verb_word in INFO_VERBS:
        return True, None
    return False, verb_word


def _first_verb(tokens: list[str]) -> str | None:
    return next((t for t in tokens if t not in _FILLERS), None)


_FILLERS = frozenset({"please", "also", "just", "kindly", "then", "now", "and", "maybe"})


def _affirmation(tokens: list[str]) -> bool:
    if not tokens or len(tokens) > AFFIRMATION_MAX_WORDS:
        return False
    text = " ".join(tokens)
    return any(text == a or text.startswith(a + " ") for a in AFFIRMATIONS)
