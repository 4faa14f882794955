"""The T-maze task, the shipped tiny T-maze policy and the SmolLM2 text policy."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from model_checks import text_recall_frames

from envs.frozen_policy import Frame, FrozenPolicy
from envs.tasks.text_recall import TextRecallEnv
from envs.tasks.tmaze import TMazeEnv
from envs.train_vector_policy import accuracy, train
from envs.vector_policy import (
    ACT,
    ACTION_TOKENS,
    META_FILE,
    PREFIX_LEN,
    TOKENS,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    encode_observation,
    load_vector_policy,
)


def _rollout(env: TMazeEnv, seed: int, action: int = 0) -> list[tuple[Any, ...]]:
    obs, info = env.reset(seed=seed)
    trace: list[tuple[Any, ...]] = [(obs.tolist(), info)]
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        trace.append((obs.tolist(), reward, terminated, info))
    return trace


# --------------------------------------------------------------------------- T-maze


@pytest.mark.parametrize("cue_visible", ["start", "always"])
def test_tmaze_passes_the_gymnasium_checker(cue_visible: str) -> None:
    check_env(TMazeEnv(corridor_length=3, cue_visible=cue_visible), skip_render_check=True)


def test_tmaze_episode_has_corridor_plus_one_steps_and_shows_the_cue_as_configured() -> None:
    for cue_visible in ("start", "always"):
        env = TMazeEnv(corridor_length=3, cue_visible=cue_visible)
        trace = _rollout(env, seed=5)
        assert len(trace) == 1 + 4  # reset + corridor_length + 1 steps
        observations = [step[0] for step in trace[:-1]]
        phases = [step[-1]["phase"] for step in trace]
        assert phases == ["cue", "corridor", "corridor", "junction", "done"]
        assert [step[-1]["step"] for step in trace] == [0, 1, 2, 3, 4]
        assert [obs[3] for obs in observations] == pytest.approx([0, 1 / 3, 2 / 3, 1])
        assert [obs[2] for obs in observations] == [0.0, 0.0, 0.0, 1.0]
        cue_on = [obs[env.cue] == 1.0 for obs in observations]
        assert all(obs[1 - env.cue] == 0.0 for obs in observations)
        assert cue_on == ([True, False, False, False] if cue_visible == "start" else [True] * 4)
        assert all(step[1] == 0.0 and not step[2] for step in trace[1:-1])


def test_tmaze_is_deterministic_per_seed_and_draws_both_cues() -> None:
    a, b = TMazeEnv(corridor_length=4), TMazeEnv(corridor_length=4)
    assert _rollout(a, seed=11) == _rollout(b, seed=11)
    cues = {TMazeEnv().reset(seed=seed)[0][:2].tolist().index(1.0) for seed in range(20)}
    assert cues == {0, 1}


def test_tmaze_rewards_the_cued_turn_only() -> None:
    env = TMazeEnv(corridor_length=2)
    for seed in range(10):
        for action in (0, 1):
            *_, (_, reward, terminated, info) = _rollout(env, seed=seed, action=action)
            assert terminated and info["answer"] == env.cue
            assert info["correct"] == (action == info["answer"])
            assert reward == (1.0 if action == info["answer"] else 0.0)


def test_tmaze_renders_a_line_and_rejects_bad_arguments() -> None:
    env = TMazeEnv(corridor_length=2, render_mode="ansi")
    env.reset(seed=0)
    picture = env.render()
    assert isinstance(picture, str) and picture.startswith("cue=") and "\n" not in picture
    env.step(0)
    assert env.render().startswith("cue=?")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="action"):
        env.step(2)
    for bad in (0, 257, 2.5, True):
        with pytest.raises(ValueError, match="corridor_length"):
            TMazeEnv(corridor_length=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cue_visible"):
        TMazeEnv(cue_visible="never")
    with pytest.raises(ValueError, match="render_mode"):
        TMazeEnv(render_mode="human")
    with pytest.raises(RuntimeError, match="reset"):
        TMazeEnv().step(0)


# --------------------------------------------------------------------------- tiny vector policy


@pytest.fixture(scope="module")
def vector_policy() -> Any:
    return load_vector_policy()


def test_vector_frames_follow_the_contract(vector_policy: Any) -> None:
    assert isinstance(vector_policy, FrozenPolicy)
    assert not vector_policy.model.training
    assert not any(p.requires_grad for p in vector_policy.model.parameters())
    env = TMazeEnv(corridor_length=3, cue_visible="start")
    obs, info = env.reset(seed=0)
    frames = [vector_policy.frame(obs, info)]
    for _ in range(3):
        obs, _, _, _, info = env.step(0)
        frames.append(vector_policy.frame(obs, info))
    assert all(isinstance(f, Frame) and len(f.prefix_ids) == PREFIX_LEN for f in frames)
    assert all(f.suffix_ids == [ACT] for f in frames)
    assert [f.choices for f in frames] == [None, None, None, [[t] for t in ACTION_TOKENS]]
    assert frames[0].prefix_ids[1] == TOKENS.index("<cue:left>" if env.cue == 0 else "<cue:right>")
    assert {f.prefix_ids[1] for f in frames[1:]} == {TOKENS.index("<cue:none>")}
    with pytest.raises(ValueError, match="obs"):
        encode_observation([1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="both cues"):
        encode_observation([1.0, 1.0, 0.0, 0.0])


def test_shipped_weights_are_small_and_describe_themselves() -> None:
    weights, meta_path = WEIGHTS_DIR / WEIGHTS_FILE, WEIGHTS_DIR / META_FILE
    assert weights.stat().st_size < 400_000
    meta = json.loads(meta_path.read_text())
    assert meta["tokens"] == list(TOKENS)
    assert meta["config"]["vocab_size"] == len(TOKENS)
    assert {"seed", "steps", "lr"} <= set(meta["training"])


def test_shipped_policy_is_perfect_when_it_sees_the_cue_and_chance_when_it_cannot(
    vector_policy: Any,
) -> None:
    assert accuracy(vector_policy, "always", episodes=200, seed=1000) >= 0.95
    assert 0.3 <= accuracy(vector_policy, "start", episodes=200, seed=1000) <= 0.7


def test_tiny_policy_steps_under_tempofit_and_its_memory_recovers_the_cue(
    vector_policy: Any,
) -> None:
    from memory import TempoFitConfig
    from policies import TempoFit
    from policies.choice_scoring import score_choices

    model = vector_policy.model
    tf = TempoFit(model, TempoFitConfig(layers=[1, 2], capacity=8))
    try:
        env = TMazeEnv(corridor_length=3, cue_visible="start")
        obs, info = env.reset(seed=0)
        for step in range(4):
            frame = vector_policy.frame(obs, info)
            with torch.no_grad(), tf.step(prefix_len=len(frame.prefix_ids)):
                out = model(torch.tensor([frame.prefix_ids + frame.suffix_ids]), use_cache=True)
            assert out.logits.shape == (1, PREFIX_LEN + 1, len(TOKENS))
            assert tf.memory.num_frames(1) == step + 1
            if frame.choices is not None:
                scores = score_choices(model, out.logits[0, -1], out.cache, frame.choices)
                assert len(scores) == 2 and all(np.isfinite(scores))
            else:
                obs, _, _, _, info = env.step(0)
    finally:
        tf.remove()
    # Measured with the shipped weights: 1.0 at corridor lengths 4 and 8 (memoryless: ~0.5).
    config = TempoFitConfig(layers=[1, 2], capacity=8)
    assert (
        accuracy(vector_policy, "start", 50, corridor_length=4, memory="tempofit", config=config)
        >= 0.9
    )


def test_retraining_with_the_shipped_seed_reproduces_the_policy() -> None:
    meta = json.loads((WEIGHTS_DIR / META_FILE).read_text())["training"]
    policy, report = train(seed=meta["seed"], steps=meta["steps"], lr=meta["lr"])
    # How long it took is the trainer's printed report, not an assertion (machines are shared).
    assert report.train_seconds > 0
    assert report.accuracy_always >= 0.95 and 0.3 <= report.accuracy_start <= 0.7
    assert not any(p.requires_grad for p in policy.model.parameters())
    with pytest.raises(ValueError, match="steps"):
        train(steps=0)


# --------------------------------------------------------------------------- SmolLM2 text policy


@pytest.fixture(scope="module")
def text_policy() -> Any:
    from envs.text_policy import load_text_policy

    return load_text_policy()


@pytest.mark.slow
def test_text_frames_keep_one_template_and_score_the_option_words(text_policy: Any) -> None:
    tokenizer = text_policy.tokenizer
    frames, info = text_recall_frames(text_policy, delay=2)
    head = tokenizer.encode("<|im_start|>user\n", add_special_tokens=False)
    tail = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    suffix = tokenizer.encode("<|im_start|>assistant\nAnswer:", add_special_tokens=False)
    for frame in frames:
        assert frame.prefix_ids[: len(head)] == head and frame.prefix_ids[-len(tail) :] == tail
        assert frame.suffix_ids == suffix
    assert [f.choices is None for f in frames] == [True, True, True, False]
    query = frames[-1]
    assert query.labels == info["choices"]
    assert query.choices == [
        tokenizer.encode(" " + w, add_special_tokens=False) for w in info["choices"]
    ]
    assert [tokenizer.decode(c).strip() for c in query.choices] == info["choices"]
    assert "Options" not in tokenizer.decode(query.prefix_ids)
    assert "Question:" in tokenizer.decode(query.prefix_ids)
    with pytest.raises(ValueError, match="obs"):
        text_policy.frame(np.zeros(3), {"choices": []})


@pytest.mark.slow
def test_smollm2_recalls_a_cue_given_in_the_same_observation(text_policy: Any) -> None:
    from envs.memory_runners import make_runner

    env = TextRecallEnv(delay=0, category="colour")
    runner = make_runner("none", text_policy)
    correct = 0
    for seed in range(20):
        cue, _ = env.reset(seed=seed)
        query, _, _, _, info = env.step(0)
        runner.reset()
        action, trace = runner.act(f"{cue} {query}", info)
        assert trace.decided
        _, reward, terminated, _, _ = env.step(action)
        assert terminated
        correct += reward == 1.0
    # Measured: 19/20 on these seeds, 74/100 on seeds 0..99 (chance 0.25; listing the options
    # in the prompt instead: 4/20).
    assert correct / 20 >= 0.6
