"""The evaluation harness on a tiny run: paired episodes, honest summaries, JSON, plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envs.eval_plots import plot_all
from envs.evaluation import EvalReport, evaluate, wilson_interval
from envs.frozen_policy import Frame
from policies import tiny_random_model


class _TMazeTokens:
    """A random tiny LLaMA reading T-maze observations as 4 tokens; decides at the junction."""

    name = "tiny-random"

    def __init__(self) -> None:
        self.model = tiny_random_model()

    def frame(self, obs: np.ndarray, info: dict[str, Any]) -> Frame:
        prefix = [1, 2 + int(obs[0]), 4 + int(obs[1]), 6 + int(obs[2]), 8 + int(4 * obs[3])]
        choices = [[20], [21]] if info["phase"] == "junction" else None
        return Frame(prefix_ids=prefix, suffix_ids=[30], choices=choices)


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (round(low, 3), round(high, 3)) == (0.237, 0.763)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 3) == 0.278
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_tiny_evaluation_is_paired_consistent_and_round_trips(tmp_path: Path) -> None:
    policy = _TMazeTokens()
    report = evaluate(
        "tempomem/TMaze-v0",
        policy,
        ["none", "tempofit", "stacking", "episodic"],
        episodes=6,
        seed=3,
        env_kwargs={"corridor_length": 3},
        runner_options={"stacking": {"k": 2}, "tempofit": {"capacity": 4}},
    )
    assert [s.memory for s in report.summaries] == ["none", "tempofit", "stacking", "episodic"]
    for summary in report.summaries:
        results = [e for e in report.episodes if e.memory == summary.memory]
        assert [e.seed for e in results] == list(range(3, 9))  # the same episodes for all
        assert summary.successes == sum(e.success for e in results)
        assert summary.ci_low <= summary.success_rate <= summary.ci_high
        for episode in results:
            assert len(episode.steps) == 4  # corridor 3 + the junction
            assert [s.decided for s in episode.steps] == [False, False, False, True]
            assert episode.success == (episode.reward == 1.0)
            assert all(s.latency_ms > 0 for s in episode.steps)
    none = [e for e in report.episodes if e.memory == "none"]
    assert all(e.steps[-1].retrieved == {} for e in none)
    tempofit = [e for e in report.episodes if e.memory == "tempofit"]
    assert all(
        math.isclose(sum(e.steps[-1].retrieved.values()), 1.0, abs_tol=1e-5) for e in tempofit
    )

    again = EvalReport.from_json(report.to_json())
    assert again == report
    paths = plot_all(report, tmp_path, prefix="t_")
    assert [p.name for p in paths] == ["t_success.png", "t_latency.png", "t_timeline.png"]
    assert all(p.stat().st_size > 5_000 for p in paths)


def test_bad_arguments_are_clear_errors() -> None:
    policy = _TMazeTokens()
    with pytest.raises(ValueError, match="episodes"):
        evaluate("tempomem/TMaze-v0", policy, ["none"], episodes=0)
    with pytest.raises(ValueError, match="memories"):
        evaluate("tempomem/TMaze-v0", policy, ["none", "none"], episodes=1)
    with pytest.raises(ValueError, match="memories"):
        evaluate("tempomem/TMaze-v0", policy, ["rnn"], episodes=1)
