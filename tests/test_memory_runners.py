"""Memory runners: each kind of memory against a property it must hold (tiny random LLaMA)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from envs.frozen_policy import Frame
from envs.memory_runners import MEMORY_KINDS, make_runner
from memory import TempoFitConfig
from policies import tiny_random_model

PREFIX = 6
CHOICES = [[3], [5, 6], [9]]


class _TokenPolicy:
    """Observation = an int; its frame is fixed tokens derived from it; decide every 3rd step."""

    name = "tiny"

    def __init__(self) -> None:
        self.model = tiny_random_model()

    def frame(self, obs: int, info: dict[str, Any]) -> Frame:
        prefix = [(7 * obs + 3 * i) % 120 + 1 for i in range(PREFIX)]
        choices = CHOICES if info.get("decide") else None
        return Frame(prefix_ids=prefix, suffix_ids=[11, 12], choices=choices)


def _plain_scores(model: Any, ids: list[int]) -> list[float]:
    """Readable reference: full forward of prompt + each choice, summed log-probs."""
    scores = []
    for choice in CHOICES:
        with torch.no_grad():
            logits = model(torch.tensor([ids + choice[:-1] if len(choice) > 1 else ids])).logits
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        positions = range(len(ids) - 1, len(ids) - 1 + len(choice))
        scores.append(sum(float(logp[p, c]) for p, c in zip(positions, choice, strict=True)))
    return scores


def test_no_memory_scores_equal_the_plain_model() -> None:
    policy = _TokenPolicy()
    runner = make_runner("none", policy)
    frame = policy.frame(4, {"decide": True})
    action, trace = runner.act(4, {"decide": True})
    expected = _plain_scores(policy.model, frame.prefix_ids + frame.suffix_ids)
    assert trace.scores == pytest.approx(expected, abs=1e-5)
    assert action == max(range(3), key=expected.__getitem__)
    _, quiet = runner.act(5, {})
    assert quiet.scores is None and not quiet.decided and quiet.action == 0


def test_tempofit_first_step_is_the_frozen_model_and_retrieval_masses_are_a_distribution() -> None:
    policy = _TokenPolicy()
    plain = make_runner("none", _TokenPolicy())
    runner = make_runner("tempofit", policy, config=TempoFitConfig(layers=[1, 2], capacity=3))
    _, first = runner.act(0, {"decide": True})
    _, reference = plain.act(0, {"decide": True})
    assert first.scores == reference.scores  # empty memory: bit-exact frozen model
    assert first.retrieved == {} and first.frames_in_memory == 0
    traces = [runner.act(obs, {"decide": True})[1] for obs in range(1, 6)]
    assert [t.frames_in_memory for t in traces] == [1, 2, 3, 3, 3]  # FIFO capacity 3
    for step, trace in enumerate(traces, start=1):
        assert sum(trace.retrieved.values()) == pytest.approx(1.0, abs=1e-5)
        assert sorted(trace.retrieved) == list(range(max(0, step - 3), step))
    assert traces[-1].scores != plain.act(5, {"decide": True})[1].scores  # memory changed it
    runner.reset()
    assert runner.act(0, {"decide": True})[1].scores == reference.scores
    runner.close()
    assert plain.act(0, {"decide": True})[1].scores == reference.scores


def test_stacking_scores_equal_the_plain_model_on_the_concatenated_frames() -> None:
    policy = _TokenPolicy()
    runner = make_runner("stacking", policy, k=2)
    for obs in range(3):
        runner.act(obs, {})
    _, trace = runner.act(3, {"decide": True})
    ids = [t for obs in (1, 2, 3) for t in policy.frame(obs, {}).prefix_ids] + [11, 12]
    assert trace.scores == pytest.approx(_plain_scores(policy.model, ids), abs=1e-5)
    assert trace.retrieved == {1: 1.0, 2: 1.0} and trace.frames_in_memory == 2
    with pytest.raises(ValueError, match="k"):
        make_runner("stacking", policy, k=0)


def test_episodic_short_stream_equals_full_attention_first_token_scores() -> None:
    """Nothing has left the local window yet: EM-LLM attends to the whole stream, so its
    first-token scores are the plain model's on the concatenated frames."""
    policy = _TokenPolicy()
    runner = make_runner("episodic", policy)
    runner.act(0, {})
    _, trace = runner.act(1, {"decide": True})
    ids = policy.frame(0, {}).prefix_ids + policy.frame(1, {}).prefix_ids + [11, 12]
    with torch.no_grad():
        logits = policy.model(torch.tensor([ids])).logits[0, -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    assert trace.scores == pytest.approx([float(logp[c[0]]) for c in CHOICES], abs=1e-4)
    runner.close()


def test_episodic_long_stream_retrieves_events_of_past_steps() -> None:
    policy = _TokenPolicy()
    runner = make_runner("episodic", policy)
    traces = [runner.act(obs, {"decide": obs % 3 == 2})[1] for obs in range(24)]
    later = [t for t in traces[12:] if t.retrieved]
    assert later, "events were formed and retrieved once the stream outgrew the window"
    for trace in later:
        assert sum(trace.retrieved.values()) == pytest.approx(1.0)
        assert all(step < trace.step for step in trace.retrieved)
    runner.close()


def test_unknown_kind_and_bad_policy_are_clear_errors() -> None:
    assert set(MEMORY_KINDS) == {"none", "tempofit", "episodic", "stacking"}
    with pytest.raises(ValueError, match="memory must be one of"):
        make_runner("lstm", _TokenPolicy())
    with pytest.raises(ValueError, match="FrozenPolicy"):
        make_runner("none", object())  # type: ignore[arg-type]


def test_tempofit_in_seconds_reads_the_time_of_a_timestamped_env() -> None:
    """The glue with the wrappers: a TimestampWrapper's observation dict is unwrapped for the
    policy and its info["t"] is TempoFit's time when gap_unit is "seconds"."""
    import gymnasium as gym

    import envs
    from envs.evaluation import run_episode

    class _TMaze(_TokenPolicy):
        def frame(self, obs: Any, info: dict[str, Any]) -> Frame:
            prefix = [1, 2 + int(obs[0]), 4 + int(obs[1]), 6 + int(obs[2])]
            choices = [[20], [21]] if info["phase"] == "junction" else None
            return Frame(prefix_ids=prefix, suffix_ids=[30], choices=choices)

    config = TempoFitConfig(layers=[1, 2], capacity=8, gap_unit="seconds")
    runner = make_runner("tempofit", _TMaze(), config=config)
    env = envs.TimestampWrapper(gym.make("tempomem/TMaze-v0", corridor_length=3), dt=0.5)
    result = run_episode(runner, env, seed=0, episode=0)
    assert [s.frames_in_memory for s in result.steps] == [0, 1, 2, 3]
    assert sorted(result.steps[-1].retrieved) == [0, 1, 2]  # env steps, not seconds
    times = runner.tempofit.memory.state_dict()["layer.1.frame_time"][0].tolist()
    assert times == [0.0, 0.5, 1.0, 1.5]  # the wrapper's clock, in seconds

    plain_env = gym.make("tempomem/TMaze-v0", corridor_length=3)
    with pytest.raises(ValueError, match="TimestampWrapper"):
        run_episode(runner, plain_env, seed=0, episode=0)
    runner.close()
