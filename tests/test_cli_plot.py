"""`tempomem plot events` draws the episodic trace of a run to a PNG."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.cli import app


def test_plot_events_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "events.png"
    result = CliRunner().invoke(
        app,
        [
            "plot",
            "events",
            "--model",
            "tiny-llama",
            "--out",
            str(out),
            "--repeats",
            "8",
            "--n-local",
            "32",
            "--chunk-size",
            "16",
            "--new-tokens",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "events:" in result.output


def test_plot_events_rejects_an_unknown_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plot", "events", "--model", "gpt-9"])
    assert result.exit_code != 0
    assert "tiny-llama" in result.output
