"""The `tempomem` command line."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    name="tempomem",
    help="Memory middleware with temporal awareness for frozen robot and agent policies.",
    no_args_is_help=True,
    add_completion=False,
)
store_app = typer.Typer(help="Inspect a state store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
eval_app = typer.Typer(help="Evaluate memory components on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console()


@app.command()
def version() -> None:
    """Print the tempomem version."""
    console.print(importlib.metadata.version("tempomem"))


@app.command()
def doctor() -> None:
    """Check what this machine has: torch, triton, a GPU, redis-server, transformers."""
    table = Table("component", "status")
    for dist in ("torch", "triton", "transformers", "ray", "redis", "gymnasium"):
        try:
            table.add_row(dist, importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            table.add_row(dist, "[yellow]not installed[/]")
    try:
        import torch

        table.add_row("CUDA", "available" if torch.cuda.is_available() else "no (CPU paths)")
    except ImportError:
        table.add_row("CUDA", "[yellow]torch missing[/]")
    binary = shutil.which("redis-server")
    table.add_row(
        "redis-server", binary or "[yellow]not found (apt-get install -y redis-server)[/]"
    )
    console.print(table)


@store_app.command("ping")
def store_ping(url: str = typer.Option("redis://127.0.0.1:6379/0", help="Redis URL.")) -> None:
    """Check that a Redis store answers."""
    from kv_store import RedisStore, StoreUnavailable

    try:
        RedisStore(url).ping()
    except StoreUnavailable as err:
        console.print(f"[red]unavailable[/]: {err}")
        raise typer.Exit(1) from err
    console.print(f"[green]ok[/]: {url}")


@eval_app.command("toolcalls")
def eval_toolcalls(
    file: Annotated[Path, typer.Argument(help="JSONL of labelled tool-call trajectories.")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results here (JSON).")
    ] = None,
    ttl_minutes: Annotated[
        float, typer.Option(help="TTL of the fixed-TTL baseline, in minutes.")
    ] = 30.0,
) -> None:
    """Normalised alignment rate of the ToolCallAdvisor vs always-call, never-call, fixed TTL."""
    from memory.temporal import (
        ToolCallAdvisor,
        always_call,
        evaluate,
        fixed_ttl,
        load_trajectories,
        never_call,
    )
    from memory.temporal.evaluation import DecideFn

    if not file.is_file():
        console.print(f"[red]error[/]: {file} is not a file")
        raise typer.Exit(2)
    if not ttl_minutes > 0:
        console.print(f"[red]error[/]: --ttl-minutes must be > 0, got {ttl_minutes}")
        raise typer.Exit(2)
    try:
        trajectories = load_trajectories(file)
    except (ValueError, UnicodeDecodeError) as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    if not trajectories:
        console.print(f"[red]error[/]: {file} holds no trajectories")
        raise typer.Exit(2)
    advisor = ToolCallAdvisor()
    ttl_name = f"ttl-{ttl_minutes:g}min"
    methods: dict[str, DecideFn] = {
        "advisor": lambda messages, tools: advisor.decide(messages, tools),
        "always-call": always_call,
        "never-call": never_call,
        ttl_name: fixed_ttl(ttl_minutes * 60.0),
    }
    try:
        reports = {name: evaluate(trajectories, fn) for name, fn in methods.items()}
    except ValueError as err:
        console.print(f"[red]error[/]: {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from err
    names = list(reports)
    summary = Table("method", "alignment rate", "accuracy", title=f"{len(trajectories)} decisions")
    for name, report in reports.items():
        c = report.confusion
        summary.add_row(name, f"{c.alignment_rate:.3f}", f"{c.accuracy:.3f}")
    console.print(summary)
    confusion = Table(
        "method", "call/call", "call/answer", "answer/call", "answer/answer",
        title="confusion (preferred/decided)",
    )  # fmt: skip
    for name, report in reports.items():
        c = report.confusion
        confusion.add_row(
            name, str(c.true_call), str(c.false_answer), str(c.false_call), str(c.true_answer)
        )
    console.print(confusion)
    first = reports[names[0]]
    breakdown = Table("group", "n", *names, title="alignment rate per sensitivity and domain")
    groups = [("sensitivity: " + s, "per_sensitivity", s) for s in ("high", "medium", "low")]
    groups += [(d, "per_domain", d) for d in sorted(first.per_domain)]
    for label, attr, key in groups:
        if key not in getattr(first, attr):
            continue
        cells = [f"{getattr(r, attr)[key].alignment_rate:.3f}" for r in reports.values()]
        breakdown.add_row(label, str(getattr(first, attr)[key].total), *cells)
    console.print(breakdown)
    if json_out is not None:
        result = {
            "file": str(file),
            "n": len(trajectories),
            "methods": {name: _report_json(report) for name, report in reports.items()},
        }
        json_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        console.print(f"wrote {json_out}")


def _confusion_json(confusion: Any) -> dict[str, Any]:
    return {
        "alignment_rate": confusion.alignment_rate,
        "accuracy": confusion.accuracy,
        "n": confusion.total,
        "true_call": confusion.true_call,
        "false_call": confusion.false_call,
        "true_answer": confusion.true_answer,
        "false_answer": confusion.false_answer,
    }


def _report_json(report: Any) -> dict[str, Any]:
    return {
        **_confusion_json(report.confusion),
        "per_domain": {k: _confusion_json(v) for k, v in sorted(report.per_domain.items())},
        "per_sensitivity": {
            k: _confusion_json(v) for k, v in sorted(report.per_sensitivity.items())
        },
        "misses": list(report.misses),
    }


@app.command()
def demo() -> None:
    """Run the end-to-end demo (robot episodes with and without memory, an agent scenario)."""
    console.print("nothing to demo yet: the demo lands with the gymnasium/evaluation issue")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
