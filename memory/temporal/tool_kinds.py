"""Read tools and action tools: does calling a tool look something up, or change the world?

An action (create, book, cancel, send, transfer, allocate, delete, ...) needs a call for every
request to do it, redo it or confirm it, whatever the age of its last result; a lookup can be
answered from a fresh cached result. Evidence, strongest first:

1. MCP-style annotations (`readOnlyHint`, `destructiveHint`, `idempotentHint`), given in the
   spec's `annotations` (beside or inside "function" of an OpenAI spec, or on an MCP tool).
2. The tool's name: a first word that is a lookup verb (get_, list_, search_, track_) makes a
   read tool; a first word that is an action verb makes an action tool unless a lookup noun
   follows (order_status, transfer_history); otherwise any action verb in the name.
3. The first word of the description ("Books a table ...", "Returns the ...").
4. Otherwise a read tool.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memory.temporal.horizons import ToolSpec, words, wordset


class ToolKind(StrEnum):
    READ = "read"
    ACTION = "action"


ACTION_VERBS = wordset(
    """create add insert update edit modify set change delete remove cancel book rebook reserve
    order purchase buy sell pay transfer send resend post publish submit schedule reschedule
    assign allocate deallocate approve reject grant revoke enable disable start stop restart
    pause resume deploy launch trigger execute run rerun move rename upload write save register
    enroll subscribe unsubscribe invite reply forward share archive mark refund charge issue file
    open close lock unlock reset apply redeem dispatch notify message email hold release
    block unblock adjust increase decrease raise lower turn switch toggle make request log
    withdraw deposit rent hire checkin checkout upgrade downgrade extend renew accept decline
    complete provision scale terminate kill retry redo repeat print dim arm disarm topup
    replace void revert rollback restore import tag flag pin mute follow unfollow return
    reassign escalate confirm"""
)
READ_VERBS = wordset(
    """get fetch list search find lookup look query read check show view describe retrieve
    count estimate calculate compute convert translate track monitor watch browse
    summarize summarise explain compare recommend suggest predict forecast validate verify
    inspect scan detect analyze analyse measure locate geocode ping poll load"""
)
NOUN_LIKE_VERBS = wordset(
    "schedule order transfer post update set change record return purchase request plan"
)
READ_NOUNS = wordset(
    """status history detail info information list lookup search availability quote estimate
    balance summary report log record price rate state progress eta tracker"""
)
DESCRIPTION_READ_VERBS = READ_VERBS | {"return", "provide", "give", "tell"}
HINT_KEYS = ("readOnlyHint", "destructiveHint", "idempotentHint")


@dataclass(frozen=True)
class ToolNature:
    """A tool's kind, its MCP hints when given, where the kind came from, and its verbs."""

    kind: ToolKind
    source: str  # "annotations" | "name" | "description" | "default"
    destructive: bool | None = None
    idempotent: bool | None = None
    verbs: frozenset[str] = frozenset()  # action verbs naming what the tool does

    @property
    def is_action(self) -> bool:
        return self.kind is ToolKind.ACTION


def verb(word: str, vocabulary: frozenset[str]) -> str | None:
    """`word` as a verb of `vocabulary` ("publishe" -> "publish", "fetche" -> "fetch")."""
    if word in vocabulary:
        return word
    if word.endswith("e") and word[:-1] in vocabulary:
        return word[:-1]
    return None


def classify_tool(spec: ToolSpec) -> ToolNature:
    """Read or action, from annotations, then the name, then the description."""
    name = words(spec.name)
    verbs = frozenset(v for w in name if (v := verb(w, ACTION_VERBS)))
    hints = {key: spec.annotations.get(key) for key in HINT_KEYS}
    destructive = hints["destructiveHint"] if isinstance(hints["destructiveHint"], bool) else None
    idempotent = hints["idempotentHint"] if isinstance(hints["idempotentHint"], bool) else None
    read_only = hints["readOnlyHint"]
    if read_only is True:
        return ToolNature(ToolKind.READ, "annotations", False, idempotent)
    if read_only is False or destructive is True:
        described = frozenset(v for w in words(spec.description) if (v := verb(w, ACTION_VERBS)))
        own = verbs or described or frozenset(name[:1])
        return ToolNature(ToolKind.ACTION, "annotations", destructive, idempotent, own)
    kind = _kind_from_name(name)
    source = "name"
    if kind is None:
        kind, source = _kind_from_description(spec.description), "description"
    if kind is None:
        return ToolNature(ToolKind.READ, "default", destructive, idempotent)
    if kind is ToolKind.ACTION and not verbs:
        verbs = frozenset(v for w in words(spec.description)[:1] if (v := verb(w, ACTION_VERBS)))
    return ToolNature(kind, source, destructive, idempotent, verbs)


def _kind_from_name(name: list[str]) -> ToolKind | None:
    if not name:
        return None
    first, rest = name[0], name[1:]
    if first == "check" and rest[:1] in (["in"], ["out"]):
        return ToolKind.ACTION
    if verb(first, READ_VERBS):
        return ToolKind.READ
    if verb(first, ACTION_VERBS):
        return ToolKind.READ if READ_NOUNS & set(rest) else ToolKind.ACTION
    if READ_NOUNS & set(name):
        return ToolKind.READ
    # A verb inside the name acts ("user_create", "invoice_send_v2"); a last word that is as
    # often a noun ("class_schedule", "purchase_order") names a thing, so it does not decide.
    if any(verb(w, ACTION_VERBS) for w in rest[:-1]) or (
        rest and verb(rest[-1], ACTION_VERBS) and rest[-1] not in NOUN_LIKE_VERBS
    ):
        return ToolKind.ACTION
    return None


def _kind_from_description(description: str) -> ToolKind | None:
    first = words(description)[:1]
    if not first:
        return None
    if verb(first[0], DESCRIPTION_READ_VERBS):
        return ToolKind.READ
    if verb(first[0], ACTION_VERBS):
        return ToolKind.ACTION
    return None
