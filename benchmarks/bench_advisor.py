"""ToolCallAdvisor: decision latency and alignment with people's preferences (TicToc).

- Latency per decision over the labelled trajectories (tests/data/toolcall_trajectories.jsonl),
  after one warm-up pass has cached the tool specs' horizons: median and p99, and the ratio of
  the advisor to the fixed-TTL baseline (same tool choice, no coverage) in the same run.
- Normalised alignment rate (balanced accuracy of call vs answer against `prefer_tool`) of the
  advisor and the always-call, never-call and fixed 30-minute TTL baselines, per sensitivity and
  per domain.
"""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path

from benchmarks.timing import compare, fmt_ms
from memory.temporal import (
    ToolCallAdvisor,
    always_call,
    evaluate,
    fixed_ttl,
    format_confusion,
    format_reports,
    load_trajectories,
    never_call,
)

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "toolcall_trajectories.jsonl"


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
    ttl = fixed_ttl()

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
    reports = {
        "advisor": evaluate(trajectories, advisor.decide),
        "always-call": evaluate(trajectories, always_call),
        "never-call": evaluate(trajectories, never_call),
        "30-min TTL": evaluate(trajectories, ttl),
    }
    advisor_report = reports["advisor"]
    misses = "\n".join(f"- {miss}" for miss in advisor_report.misses) or "- none"
    return (
        f"Decision latency over {len(trajectories)} labelled trajectories x {rounds} rounds "
        f"(horizons cached): median **{median_us:.1f} µs**, p99 **{p99_us:.1f} µs** "
        "(target < 100 µs). Advisor / fixed-TTL baseline on the whole set: "
        f"{versus_ttl.paired_ratio:.2f}x ({fmt_ms(versus_ttl.ours_s)} ms vs "
        f"{fmt_ms(versus_ttl.baseline_s)} ms for {len(trajectories)} decisions).\n\n"
        "Normalised alignment rate (balanced accuracy of call vs answer-directly against the "
        "label; 0.5 = chance; lexicon horizons, no embedder):\n\n"
        f"{format_reports(reports)}\n\nAdvisor confusion matrix:\n\n"
        f"{format_confusion(advisor_report.confusion)}\n\nAdvisor misses:\n\n{misses}\n"
    )


if __name__ == "__main__":
    print(run())
