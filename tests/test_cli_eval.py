"""`tempomem eval toolcalls` on the shipped trajectories, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from services.cli import app

DATA = Path(__file__).parent / "data" / "toolcall_trajectories.jsonl"
runner = CliRunner()


def test_eval_toolcalls_prints_tables_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["eval", "toolcalls", str(DATA), "--json", str(out)])
    assert result.exit_code == 0, result.output
    for word in ("advisor", "always-call", "never-call", "ttl-30min", "weather", "confusion"):
        assert word in result.output
    data = json.loads(out.read_text())
    methods = data["methods"]
    assert data["n"] == sum(1 for line in DATA.read_text().splitlines() if line.strip())
    assert methods["always-call"]["alignment_rate"] == 0.5
    assert methods["never-call"]["alignment_rate"] == 0.5
    assert methods["advisor"]["alignment_rate"] > methods["ttl-30min"]["alignment_rate"]
    assert methods["advisor"]["alignment_rate"] > 0.9
    advisor = methods["advisor"]
    total = sum(advisor[k] for k in ("true_call", "false_call", "true_answer", "false_answer"))
    assert total == data["n"]
    assert set(advisor["per_domain"]) >= {"weather", "stock_quote"}
    assert sum(d["n"] for d in advisor["per_domain"].values()) == data["n"]


def test_eval_toolcalls_ttl_option(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(
        app, ["eval", "toolcalls", str(DATA), "--ttl-minutes", "5", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "ttl-5min" in json.loads(out.read_text())["methods"]


def test_eval_toolcalls_bad_line_names_line(tmp_path: Path) -> None:
    good = DATA.read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + '{"domain": "x"\n')
    result = runner.invoke(app, ["eval", "toolcalls", str(bad)])
    assert result.exit_code == 2
    assert f"{bad.name}:2" in result.output
    assert "not JSON" in result.output


def test_eval_toolcalls_invalid_record_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    result = runner.invoke(app, ["eval", "toolcalls", str(bad)])
    assert result.exit_code == 2
    assert "bad.jsonl:1" in result.output
    result = runner.invoke(app, ["eval", "toolcalls", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2
    assert "not a file" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = runner.invoke(app, ["eval", "toolcalls", str(empty)])
    assert result.exit_code == 2
    assert "no trajectories" in result.output
