"""`tempomem eval robot` and `make demo`: the user's two entry points to the evaluation."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.robot_eval import parse_env_args

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_eval_robot_on_the_tmaze_writes_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "robot", "--policy", "tmaze-tiny", "--episodes", "4", "--seed", "1"]
    args += ["--memory", "none", "--memory", "tempofit", "--memory", "stacking"]
    args += ["--env-arg", "corridor_length=2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tempomem/TMaze-v0" in result.output and "stacking" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["env_kwargs"] == {"corridor_length": 2} and report["policy"] == "tmaze-tiny"
    assert [s["memory"] for s in report["summaries"]] == ["none", "tempofit", "stacking"]
    assert all(s["episodes"] == 4 for s in report["summaries"])
    for name in ("success.png", "latency.png", "timeline.png"):
        assert (out / name).stat().st_size > 5_000


def test_eval_robot_runs_permanence_vla_on_its_task_by_default(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", "robot", "--policy", "permanence-vla", "--episodes", "6", "--beta", "0"]
    args += ["--memory", "none", "--memory", "tempofit", "--env-arg", "delay=1"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["env_id"] == "tempomem/ObjectPermanence-v0"
    assert report["env_kwargs"] == {"delay": 1} and report["policy"] == "permanence-vla"
    for summary in report["summaries"]:
        assert summary["episodes"] == 6
        assert summary["ci_low"] <= summary["success_rate"] <= summary["ci_high"]


def test_eval_robot_bad_options_exit_2_with_a_message(tmp_path: Path) -> None:
    for bad, words in (
        (["--policy", "gpt-9"], "--policy must be one of"),
        (["--env-arg", "corridor_length"], "KEY=VALUE"),
        (["--memory", "lstm"], "memories must be"),
        (["--capacity", "0"], "capacity must be"),
        (["--beta", "-1"], "beta"),
        (["--beta", "nan"], "beta"),
    ):
        args = ["eval", "robot", "--policy", "tmaze-tiny", "--episodes", "1"]
        result = runner.invoke(app, [*args, *bad, "--out", str(tmp_path)])
        assert result.exit_code == 2, (bad, result.output)
        assert words in result.output, (bad, result.output)


def test_parse_env_args_reads_json_values_and_keeps_strings() -> None:
    assert parse_env_args(["delay=6", "category=mixed", "distractors=false"]) == {
        "delay": 6,
        "category": "mixed",
        "distractors": False,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env_args(["=3"])


@pytest.mark.slow
def test_make_demo_runs_end_to_end_with_few_episodes(tmp_path: Path) -> None:
    """The README's main job, with 2 episodes per configuration (CI runs this)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "demo",
            f"DEMO_ARGS=--episodes 2 --text-episodes 2 --out {tmp_path}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "summary" in output
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert [run["memory"] for run in demo["service"]] == [True, False]
    assert all(run["episodes"] == 2 for run in demo["service"])
    assert set(demo["in_process"]) == {"permanence", "tmaze", "text"}
    assert demo["settings"]["text_episodes"] == 2
    assert len(demo["agent"]) == 6
    for prefix in ("permanence_", "text_", "tmaze_"):
        for name in ("success.png", "latency.png", "timeline.png"):
            assert (tmp_path / f"{prefix}{name}").stat().st_size > 5_000
