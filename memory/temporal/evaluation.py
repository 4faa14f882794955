"""Evaluation against people's preferences: the normalised alignment rate (TicToc).

A trajectory is a conversation (with a time at least on its last message) whose last message is
the user's new request, the available tools, and the label `prefer_tool`: whether a careful
person would want the agent to call a tool now (True) or answer directly (False). The normalised
alignment rate is the balanced accuracy of the call/answer decisions: the mean of the recall on
"call" cases and on "answer" cases, so always-call and never-call both score 0.5.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from memory.temporal.advisor import ToolCallAdvisor
from memory.temporal.times import read_message_time

DEFAULT_TTL_S = 30 * 60.0


class Trajectory(BaseModel):
    """One labelled decision point."""

    model_config = ConfigDict(extra="allow")

    domain: str
    sensitivity: Literal["high", "medium", "low"]
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    prefer_tool: bool

    @field_validator("messages")
    @classmethod
    def _last_is_user_request(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not messages:
            raise ValueError("messages is empty")
        if messages[-1].get("role") != "user":
            raise ValueError("the last message must be the user's new request")
        # The decision point needs a time (the label depends on the gap); earlier messages may
        # lack one, as in real logs: the advisor takes their neighbours'.
        if read_message_time(messages[-1])[0] is None:
            raise ValueError("the last message (the user's new request) needs a readable time")
        return messages


def load_trajectories(path: str | Path) -> list[Trajectory]:
    """Trajectories from a JSONL file; a bad line raises ValueError naming the file and line."""
    path = Path(path)
    trajectories = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not JSON: {err}") from None
            try:
                trajectories.append(Trajectory.model_validate(row))
            except ValidationError as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    return trajectories


@dataclass(frozen=True)
class Confusion:
    """Counts of (decision, label) pairs; 'positive' means 'call the tool'."""

    true_call: int = 0
    false_call: int = 0  # called although answering directly was preferred
    true_answer: int = 0
    false_answer: int = 0  # answered although a call was preferred

    @property
    def total(self) -> int:
        return self.true_call + self.false_call + self.true_answer + self.false_answer

    @property
    def accuracy(self) -> float:
        return (self.true_call + self.true_answer) / self.total if self.total else 0.0

    @property
    def alignment_rate(self) -> float:
        """Balanced accuracy over the classes present (one class: its recall)."""
        recalls = []
        if self.true_call + self.false_answer:
            recalls.append(self.true_call / (self.true_call + self.false_answer))
        if self.true_answer + self.false_call:
            recalls.append(self.true_answer / (self.true_answer + self.false_call))
        return sum(recalls) / len(recalls) if recalls else 0.0

    def add(self, called: bool, prefer_tool: bool) -> Confusion:
        return Confusion(
            self.true_call + (called and prefer_tool),
            self.false_call + (called and not prefer_tool),
            self.true_answer + (not called and not prefer_tool),
            self.false_answer + (not called and prefer_tool),
        )


@dataclass(frozen=True)
class Report:
    """Alignment rate overall, per domain and per sensitivity, and the misses."""

    confusion: Confusion
    per_domain: Mapping[str, Confusion]
    per_sensitivity: Mapping[str, Confusion]
    misses: tuple[str, ...] = field(default_factory=tuple)

    @property
    def alignment_rate(self) -> float:
        return self.confusion.alignment_rate


DecideFn = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Any]


def evaluate(trajectories: Iterable[Trajectory], decide_fn: DecideFn) -> Report:
    """Run `decide_fn(messages, tools)` (a bool, or anything with `.call_tool`) on each."""
    overall = Confusion()
    per_domain: dict[str, Confusion] = defaultdict(Confusion)
    per_sensitivity: dict[str, Confusion] = defaultdict(Confusion)
    misses = []
    for index, trajectory in enumerate(trajectories):
        outcome = decide_fn(trajectory.messages, trajectory.tools)
        called = bool(getattr(outcome, "call_tool", outcome))
        label = trajectory.prefer_tool
        overall = overall.add(called, label)
        per_domain[trajectory.domain] = per_domain[trajectory.domain].add(called, label)
        per_sensitivity[trajectory.sensitivity] = per_sensitivity[trajectory.sensitivity].add(
            called, label
        )
        if called != label:
            name = getattr(trajectory, "id", None) or f"#{index}"
            misses.append(f"{name}: {'called' if called else 'answered'}; {_reason(outcome)}")
    return Report(overall, dict(per_domain), dict(per_sensitivity), tuple(misses))


def _reason(outcome: Any) -> str:
    return str(getattr(outcome, "reason", "")) or "-"


def always_call(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    """Baseline: call a tool for every request."""
    return True


def never_call(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    """Baseline: always answer from what is in the conversation."""
    return False


def fixed_ttl(ttl_s: float = DEFAULT_TTL_S) -> DecideFn:
    """Baseline: a cache keyed by tool name with one TTL for every tool.

    The tool is the one the advisor's relevance rule picks (so that only horizons and coverage
    differ); call when it has no result or its last result is older than `ttl_s`.
    """
    selector = ToolCallAdvisor()

    def decide(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
        return selector.ttl_decision(messages, tools, ttl_s)

    return decide


def format_reports(reports: Mapping[str, Report]) -> str:
    """Markdown: alignment rate overall and per sensitivity/domain, one column per method."""
    names = list(reports)
    first = reports[names[0]]
    header = "| | n | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * len(names) + "\n"
    rows = [_row("**overall**", first.confusion.total, [r.confusion for r in reports.values()])]
    for level in ("high", "medium", "low"):
        if level in first.per_sensitivity:
            confusions = [r.per_sensitivity[level] for r in reports.values()]
            rows.append(_row(f"sensitivity: {level}", confusions[0].total, confusions))
    for domain in sorted(first.per_domain):
        confusions = [r.per_domain[domain] for r in reports.values()]
        rows.append(_row(domain, confusions[0].total, confusions))
    return header + "\n".join(rows)


def _row(label: str, n: int, confusions: Sequence[Confusion]) -> str:
    return f"| {label} | {n} | " + " | ".join(f"{c.alignment_rate:.3f}" for c in confusions) + " |"


def format_confusion(confusion: Confusion) -> str:
    """Markdown 2x2 confusion matrix (rows: preferred; columns: decided)."""
    return (
        "| preferred \\ decided | call | answer |\n|---|---:|---:|\n"
        f"| call | {confusion.true_call} | {confusion.false_answer} |\n"
        f"| answer | {confusion.false_call} | {confusion.true_answer} |"
    )
