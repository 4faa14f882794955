"""``tempomem demo``: the main job, end to end on the embedded defaults.

1. **A robot policy through the service.** Local Ray (2 CPUs), the in-process store, and
   ``permanence-vla``: a VLA-shaped frozen policy (image patch tokens + an instruction through a
   small LLaMA decoder, trained without memory) on ``tempomem/ObjectPermanence-v0``: it sees
   where the target block is, then the blocks go under identical cups for ``delay`` steps and
   it must pick the target's cup. Episodes run through ``TempomemClient.step`` (one session
   actor per robot, ``placement="session"``): once with TempoFit memory, once without (the
   session is reset before every step, so each step sees the frozen policy alone).
2. **The four memories side by side, in-process** (``envs.evaluation``): no memory, TempoFit,
   EM-LLM episodic memory and frame stacking on the same occlusion task, on the vector T-maze
   (a tiny policy trained memoryless) and, as a secondary row, on text recall with the frozen
   SmolLM2-135M (a chat model too small to read a cue back across turns, with or without
   memory; BENCHMARKS.md explains). Plots: success with 95 % intervals, step latency, and the
   memory timeline (what each step's memory offered from each past step).
3. **An agent over simulated time.** The ``ToolCallAdvisor`` decides whether a repeated
   question needs a new tool call, 1 minute, 3 hours and 3 days after the last result.

Everything goes to ``out/`` (``demo.json`` + PNGs); a summary table ends the run.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from envs.evaluation import EvalReport

PERMANENCE_ENV = "tempomem/ObjectPermanence-v0"
TEXT_ENV = "tempomem/TextRecall-v0"
TMAZE_ENV = "tempomem/TMaze-v0"
TEXT_REASON = (
    "secondary: a 135M chat model that does not read a cue back across turns; over 30-episode "
    "runs no memory beats chance here (BENCHMARKS.md)"
)


@dataclass
class ServiceRun:
    memory: bool
    episodes: int
    successes: int
    step_ms: list[float] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / max(1, self.episodes)


@dataclass
class DemoSettings:
    episodes: int = 40  # per configuration of the robot tasks
    text_episodes: int = 12  # per memory on text recall (SmolLM2, ~0.1 s a step)
    delay: int = 3  # steps the target is covered (occlusion); distractor steps (text)
    out: Path = Path("out")
    seed: int = 0
    corridor: int = 4  # T-maze corridor length


def _service_runs(settings: DemoSettings, console: Console) -> list[ServiceRun]:
    """The occlusion task through ``TempomemClient`` with and without memory."""
    import gymnasium as gym
    import ray
    from rich.progress import Progress

    from envs.evaluation import run_episode
    from envs.permanence_policy import load_permanence_model, load_permanence_policy
    from envs.policy_zoo import runner_options
    from services.client import TempomemClient
    from services.policy_worker import WorkerSpec
    from services.service_runner import ServiceRunner

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            namespace=f"tempomem-demo-{uuid.uuid4().hex[:6]}",
        )
    worker = WorkerSpec(
        label="permanence-vla",
        tempofit=runner_options("permanence-vla")["tempofit"]["config"],
        placement="session",
    )
    client = TempomemClient(
        "demo", worker=worker, worker_factory=load_permanence_model, store="local"
    )
    policy = load_permanence_policy()
    env = gym.make(PERMANENCE_ENV, delay=settings.delay)
    runs = [ServiceRun(True, 0, 0), ServiceRun(False, 0, 0)]
    runners = [
        ServiceRunner(policy, client, "with-memory" if run.memory else "no-memory", run.memory)
        for run in runs
    ]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("service episodes", total=2 * settings.episodes)
        for episode in range(settings.episodes):
            for run, runner in zip(runs, runners, strict=True):
                result = run_episode(runner, env, settings.seed + episode, episode)
                run.episodes += 1
                run.successes += int(result.success)
                run.step_ms += [step.latency_ms for step in result.steps]
                bar.advance(task)
    env.close()
    return runs


def _agent_scenario() -> list[dict[str, Any]]:
    """The advisor on one conversation, asked again after growing gaps (simulated clock)."""
    from memory import SimClock
    from memory.temporal import ToolCallAdvisor

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather conditions for a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_stock_price",
                "description": "Latest traded price of a stock ticker.",
                "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}},
            },
        },
    ]
    rows = []
    advisor = ToolCallAdvisor()
    for tool, question, result in (
        ("get_weather", "What's the weather in Paris?", "18 C and sunny in Paris"),
        ("get_stock_price", "What's the ACME share price?", "ACME 41.20 USD"),
    ):
        clock = SimClock(start=1_767_225_600.0)  # 2026-01-01T00:00:00Z, moved only by us
        call = {"id": "call_1", "type": "function", "function": {"name": tool, "arguments": "{}"}}
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": question, "time": clock.now()},
            {"role": "assistant", "content": None, "time": clock.advance(1), "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "name": tool,
                "content": result,
                "time": clock.advance(1),
            },
            {"role": "assistant", "content": result, "time": clock.advance(1)},
        ]
        answered_at = clock.now()
        for label, gap_s in (("1 minute", 60.0), ("3 hours", 3 * 3600.0), ("3 days", 3 * 86400.0)):
            now = clock.advance(answered_at + gap_s - clock.now())
            asked = [*messages, {"role": "user", "content": question, "time": now}]
            decision = advisor.decide(asked, tools, now=now)
            rows.append(
                {
                    "tool": tool,
                    "asked again after": label,
                    "call_tool": decision.call_tool,
                    "age_s": decision.age_s,
                    "horizon_s": decision.horizon_s,
                    "reason": decision.reason,
                }
            )
    return rows


def run_demo(settings: DemoSettings, console: Console) -> dict[str, Any]:
    """Run the three parts; write ``demo.json`` and the plots to ``settings.out``."""
    import envs  # noqa: F401  (registers the tempomem/ ids)
    from envs.eval_plots import plot_all
    from envs.evaluation import evaluate
    from envs.policy_zoo import load_policy, runner_options
    from services.robot_eval import summary_table

    started = time.perf_counter()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]tempomem demo")

    console.rule("1. a robot policy through the service (local Ray, in-process store)")
    runs = _service_runs(settings, console)

    console.rule("2. four memories side by side, in-process")
    reports: dict[str, EvalReport] = {}
    for name, env_id, zoo_name, kwargs, episodes in (
        ("permanence", PERMANENCE_ENV, "permanence-vla", {"delay": settings.delay}, None),
        ("tmaze", TMAZE_ENV, "tmaze-tiny", {"corridor_length": settings.corridor}, None),
        ("text", TEXT_ENV, "smollm2", {"delay": settings.delay}, settings.text_episodes),
    ):
        with console.status(f"loading {zoo_name} (frozen) ..."):
            policy = load_policy(zoo_name)
        count = episodes or settings.episodes
        with console.status(f"{env_id}: {count} episodes x 4 memories ..."):
            report = evaluate(
                env_id,
                policy,
                episodes=count,
                seed=settings.seed,
                env_kwargs=kwargs,
                runner_options=runner_options(zoo_name, stack=4),
            )
        reports[name] = report
        console.print(summary_table(report))
        (out / f"{name}_report.json").write_text(report.to_json())
        plot_all(report, out, prefix=f"{name}_")

    console.rule("3. an agent over simulated time: call the tool again?")
    agent_rows = _agent_scenario()
    agent_table = Table("tool", "asked again after", "call tool?", "result age", "horizon")
    for row in agent_rows:
        agent_table.add_row(
            row["tool"],
            row["asked again after"],
            "[green]yes[/]" if row["call_tool"] else "no (answer from the cached result)",
            _duration(row["age_s"]),
            _duration(row["horizon_s"]),
        )
    console.print(agent_table)

    summary = Table(title="tempomem demo: summary")
    summary.add_column("what")
    summary.add_column("without memory", justify="right")
    summary.add_column("with memory", justify="right")
    with_mem, without = runs[0], runs[1]
    summary.add_row(
        f"object permanence via service (permanence-vla, covered {settings.delay} steps), "
        f"success (chance 0.33)",
        f"{without.successes}/{without.episodes}",
        f"{with_mem.successes}/{with_mem.episodes} (TempoFit)",
    )
    summary.add_row(
        "service step round trip, median ms",
        f"{_median(without.step_ms):.0f}",
        f"{_median(with_mem.step_ms):.0f}",
    )
    for name, report in reports.items():
        best = max(report.summaries, key=lambda s: s.success_rate)
        label = f"{report.env_id} in-process, success"
        summary.add_row(
            f"{label} ({TEXT_REASON})" if name == "text" else label,
            f"{report.summary('none').success_rate:.2f}",
            f"best: {best.memory} {best.success_rate:.2f}",
        )
    calls = sum(r["call_tool"] for r in agent_rows)
    summary.add_row("agent: tool calls advised", f"always-call: {len(agent_rows)}", str(calls))
    console.print(summary)
    result = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        "service": [
            {**asdict(r), "success_rate": r.success_rate, "step_ms_median": _median(r.step_ms)}
            for r in runs
        ],
        "in_process": {name: [asdict(s) for s in r.summaries] for name, r in reports.items()},
        "agent": agent_rows,
        "wall_s": time.perf_counter() - started,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    console.print(f"plots and JSON in {out}/ ({result['wall_s']:.0f} s)")
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
