"""The CLI's help and summaries read as a person expects, on the current typer release."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from services.cli import app, summarize_metrics


def _commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in getattr(group, "commands", {}).items():
        found += _commands(command, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "tempomem")
def test_help_shows_click_metavars_no_type_annotations_or_braces(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    assert not re.search(r"<(bool|str|int|float|list\[[a-z]+\])>", result.output), result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_eval_toolcalls_usage_names_the_file_argument() -> None:
    result = CliRunner().invoke(app, ["eval", "toolcalls", "--help"])
    assert re.search(r"Usage: .*toolcalls \[OPTIONS\] FILE", result.output), result.output


def test_every_command_summary_is_one_whole_line() -> None:
    """Rich help keeps line breaks, so a summary (the docstring's first paragraph) wrapped
    over two source lines shows broken mid-sentence in the group's command list."""
    for path in COMMANDS[1:]:
        command = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        summary = (command.help or "").strip().split("\n\n")[0]
        assert "\n" not in summary and summary.endswith("."), f"{' '.join(path)}: {summary!r}"


def _metrics(buckets: dict[str, int], count: int) -> str:
    lines = [f'tempomem_step_latency_seconds_bucket{{le="{le}"}} {n}' for le, n in buckets.items()]
    lines += [
        f"tempomem_step_latency_seconds_count {count}",
        "tempomem_step_latency_seconds_sum 9.0",
    ]
    return "\n".join(lines)


def test_latency_quantiles_beyond_the_largest_bucket_say_so() -> None:
    text = _metrics({"0.05": 50, "0.5": 90, "+Inf": 100}, 100)
    summary = summarize_metrics(text)
    assert summary["step latency p50"] == "<= 50 ms"
    assert summary["step latency p99"] == "> 500 ms"  # was "<= inf ms"
    assert "inf" not in " ".join(summary.values())
