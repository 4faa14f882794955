"""``tempomem eval robot``: run the evaluation harness with a progress bar, save JSON + plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from envs.evaluation import EvalReport, evaluate


def parse_env_args(values: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options as env kwargs; VALUE is read as JSON when it parses (7, true,
    "x"), else kept as a string."""
    kwargs: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--env-arg {value!r}: expected KEY=VALUE with KEY an identifier")
        try:
            kwargs[key] = json.loads(raw)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return kwargs


def run_robot_eval(
    env_id: str,
    policy_name: str,
    memories: Sequence[str],
    *,
    episodes: int,
    seed: int,
    env_kwargs: Mapping[str, Any],
    runner_options: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
    console: Console,
    plots: bool = True,
) -> tuple[EvalReport, list[Path]]:
    """Evaluate, print a summary table, write ``report.json`` (and the plots) to ``out_dir``."""
    from envs.eval_plots import plot_all
    from envs.policy_zoo import load_policy

    with console.status(f"loading policy {policy_name} ..."):
        policy = load_policy(policy_name)
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {m: bar.add_task(m, total=episodes) for m in memories}

        def progress(memory: str, done: int, total: int) -> None:
            bar.update(tasks[memory], completed=done)

        report = evaluate(
            env_id,
            policy,
            memories,
            episodes=episodes,
            seed=seed,
            env_kwargs=env_kwargs,
            runner_options=runner_options,
            progress=progress,
        )
    console.print(summary_table(report))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(report.to_json())
    written = [out_dir / "report.json"]
    if plots:
        written += plot_all(report, out_dir)
    return report, written


def summary_table(report: EvalReport) -> Table:
    kwargs = " ".join(f"{k}={v}" for k, v in sorted(report.env_kwargs.items()))
    table = Table(title=f"{report.env_id} {kwargs} | policy {report.policy} | seed {report.seed}")
    for column in ("memory", "success", "95% CI", "step p50 ms", "step p99 ms", "wall s"):
        table.add_column(column, justify="left" if column == "memory" else "right")
    for s in report.summaries:
        table.add_row(
            s.memory,
            f"{s.successes}/{s.episodes} = {s.success_rate:.2f}",
            f"[{s.ci_low:.2f}, {s.ci_high:.2f}]",
            f"{s.latency_p50_ms:.1f}",
            f"{s.latency_p99_ms:.1f}",
            f"{s.wall_s:.1f}",
        )
    return table
