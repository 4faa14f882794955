"""ToolCallAdvisor: decision latency and alignment with people's preferences (TicToc).

- Latency per decision over the labelled trajectories (tests/data/toolcall_trajectories.jsonl),
  after one warm-up pass has cached the tool specs' horizons: median and p99, and the ratio of
  the advisor to the fixed-TTL baseline (same tool choice, no coverage) in the same run.
- Normalised alignment rate (balanced accuracy of call vs answer against `prefer_tool`) of the
  advisor and the always-call, never-call and fixed 30-minute TTL baselines, per sensitivity and
  per domain, on two labelled sets: the one written together with the first lexicon, and a blind
  one (tests/data/toolcall_blind.jsonl) written by someone who had not read the advisor, and
  committed before the advisor was reworked, and a blind development set
  (tests/data/toolcall_dev.jsonl, other domains, written the same way) that later rules were
  tuned on. The blind set is for evaluation only. The advisor's scores before are shown beside
  today's (the first two sets at 555d04b, the dev set at 4611b41, before any rule was tuned on
  it); they were measured then with `tempomem eval toolcalls`.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

from benchmarks.timing import compare, fmt_ms
from memory import temporal
from memory.temporal import ToolCallAdvisor, evaluate, load_trajectories

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "toolcall_trajectories.jsonl"
BLIND = DATA.with_name("toolcall_blind.jsonl")
DEV = DATA.with_name("toolcall_dev.jsonl")
#: The advisor's alignment rate before: at 555d04b (before the rework) for the first two sets,
#: at 4611b41 (before any rule was tuned on it) for the dev set.
BEFORE = {DATA.name: 0.953, BLIND.name: 0.663, DEV.name: 0.672}
BEFORE_BY_CASE = {
    BLIND.name: "action 32/38, answerable_followup 32/89, explicit_freshness 33/37, horizon "
    "73/103, new_entity 17/19, retry_after_failure 30/35, unrelated_question 17/20",
    DEV.name: "action 39/45, answerable_followup 25/45, explicit_freshness 44/45, horizon "
    "32/45, new_entity 39/45, retry_after_failure 42/45, unrelated_question 14/45",
}


def decision_latencies_s(rounds: int = 30) -> list[float]:
    """Seconds per `decide` call, every trajectory `rounds` times, after a warm-up pass."""
    trajectories = load_trajectories(DATA)
    advisor = ToolCallAdvisor()
    for trajectory in trajectories:
        advisor.decide(trajectory.messages, trajectory.tools)
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for trajectory in trajectories:
                start = time.perf_counter()
                advisor.decide(trajectory.messages, trajectory.tools)
                times.append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def run(rounds: int = 30) -> str:
    trajectories = load_trajectories(DATA)
    advisor = ToolCallAdvisor()
    ttl = temporal.fixed_ttl()

    times = sorted(decision_latencies_s(rounds))
    median_us = statistics.median(times) * 1e6
    p99_us = times[min(len(times) - 1, int(0.99 * len(times)))] * 1e6

    def all_advisor() -> None:
        for trajectory in trajectories:
            advisor.decide(trajectory.messages, trajectory.tools)

    def all_ttl() -> None:
        for trajectory in trajectories:
            ttl(trajectory.messages, trajectory.tools)

    versus_ttl = compare(all_advisor, all_ttl, repeats=11)
    reports = _reports(trajectories, advisor, ttl)
    advisor_report = reports["advisor"]
    misses = "\n".join(f"- {miss}" for miss in advisor_report.misses) or "- none"
    summary = [
        "| set | decisions | advisor before | advisor now | 30-min TTL | always | never |",
        "|---|---|---|---|---|---|---|",
    ]
    per_case = []
    for path in (DATA, BLIND, DEV):
        found = trajectories if path is DATA else load_trajectories(path)
        rows = reports if path is DATA else _reports(found, ToolCallAdvisor(), ttl)
        rate = {name: report.confusion.alignment_rate for name, report in rows.items()}
        summary.append(
            f"| `{path.name}` | {len(found)} | {BEFORE[path.name]:.3f} | **{rate['advisor']:.3f}** "
            f"| {rate['30-min TTL']:.3f} | {rate['always-call']:.3f} | {rate['never-call']:.3f} |"
        )
        if path.name in BEFORE_BY_CASE:
            by_case = _per_case(found, rows["advisor"].misses)
            per_case.append(
                f"`{path.name}`, advisor correct per scenario class: "
                + ", ".join(f"{case} {right}/{total}" for case, (right, total) in by_case.items())
                + f" (before: {BEFORE_BY_CASE[path.name]})."
            )
    return (
        "Normalised alignment rate on the labelled sets (the blind and dev sets were written "
        "without reading the advisor and committed before it changed; rules were tuned on the "
        "dev set only, never on the blind one):\n\n"
        + "\n".join(summary)
        + "\n\n"
        + "\n\n".join(per_case)
        + "\n\n"
        + (
            f"Decision latency over {len(trajectories)} labelled trajectories x {rounds} rounds "
            f"(horizons cached): median **{median_us:.1f} µs**, p99 **{p99_us:.1f} µs** "
            "(target < 100 µs). Advisor / fixed-TTL baseline on the whole set: "
            f"{versus_ttl.paired_ratio:.2f}x ({fmt_ms(versus_ttl.ours_s)} ms vs "
            f"{fmt_ms(versus_ttl.baseline_s)} ms for {len(trajectories)} decisions).\n\n"
            "Normalised alignment rate (balanced accuracy of call vs answer-directly against the "
            "label; 0.5 = chance; lexicon horizons, no embedder):\n\n"
            f"{temporal.format_reports(reports)}\n\nAdvisor confusion matrix:\n\n"
            f"{temporal.format_confusion(advisor_report.confusion)}\n\n"
            f"Advisor misses:\n\n{misses}\n"
        )
    )


def _reports(trajectories: list, advisor: ToolCallAdvisor, ttl: object) -> dict:
    return {
        "advisor": evaluate(trajectories, advisor.decide),
        "always-call": evaluate(trajectories, temporal.always_call),
        "never-call": evaluate(trajectories, temporal.never_call),
        "30-min TTL": evaluate(trajectories, ttl),  # type: ignore[arg-type]
    }


def _per_case(trajectories: list, misses: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(right, total) per scenario class (``case``) of a labelled set."""
    missed = {miss.split(":", 1)[0] for miss in misses}
    counts: dict[str, list[int]] = {}
    for trajectory in trajectories:
        case = str(getattr(trajectory, "case", "?"))
        ident = str(getattr(trajectory, "id", ""))
        right_total = counts.setdefault(case, [0, 0])
        right_total[0] += ident not in missed
        right_total[1] += 1
    return {case: (right, total) for case, (right, total) in sorted(counts.items())}


if __name__ == "__main__":
    print(run())
