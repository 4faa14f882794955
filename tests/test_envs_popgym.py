"""POPGym RepeatFirst adapter: env_checker, registration, seeding, info contract, baselines."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("popgym")

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

import envs
from envs.tasks.popgym_memory import DIFFICULTIES, PopgymRepeatFirstEnv

ENV_ID = "tempomem/PopgymRepeatFirst-v0"


def rollout(env: PopgymRepeatFirstEnv, seed: int, policy: Any) -> list[tuple[Any, ...]]:
    """(obs, reward, terminated, info) of one episode; ``policy(first_obs, obs) -> action``."""
    obs, info = env.reset(seed=seed)
    first = obs
    out: list[tuple[Any, ...]] = [(obs, 0.0, False, info)]
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(policy(first, obs))
        out.append((obs, reward, terminated, info))
    return out


def oracle(first: Any, obs: Any) -> int:
    return int(first)


def always_zero(first: Any, obs: Any) -> int:
    return 0


@pytest.mark.parametrize("difficulty", ["easy", "medium"])
def test_passes_env_checker(difficulty: str) -> None:
    check_env(PopgymRepeatFirstEnv(difficulty), skip_render_check=True)


def test_registered_and_makeable_after_import_envs() -> None:
    assert ENV_ID in envs.TASK_IDS
    env = gym.make(ENV_ID, render_mode="ansi")
    check_env(env.unwrapped)
    _, info = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Discrete(4) == env.action_space
    assert info == {"phase": "cue", "step": 0}
    assert isinstance(env.render(), str)
    env.close()


def test_import_envs_does_not_import_popgym() -> None:
    code = "import sys, envs; assert not {m for m in sys.modules if m.startswith('popgym')}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_arguments_and_misuse() -> None:
    with pytest.raises(ValueError):
        PopgymRepeatFirstEnv("extreme")
    with pytest.raises(ValueError):
        PopgymRepeatFirstEnv(render_mode="human")
    env = PopgymRepeatFirstEnv()
    with pytest.raises(RuntimeError):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(4)
    rollout(env, 0, always_zero)
    with pytest.raises(RuntimeError):
        env.step(0)


def test_seeded_determinism() -> None:
    a, b = PopgymRepeatFirstEnv(), PopgymRepeatFirstEnv()
    for seed in (0, 1, 123):
        ra, rb = rollout(a, seed, oracle), rollout(b, seed, oracle)
        assert [o for o, *_ in ra] == [o for o, *_ in rb]
        assert [(r, t, i) for _, r, t, i in ra] == [(r, t, i) for _, r, t, i in rb]
    decks = {tuple(int(o) for o, *_ in rollout(a, seed, always_zero)) for seed in range(5)}
    assert len(decks) == 5  # different seeds, different shuffles


@pytest.mark.parametrize("difficulty", ["easy", "medium"])
def test_info_contract_and_oracle(difficulty: str) -> None:
    env = PopgymRepeatFirstEnv(difficulty)
    n = 52 * DIFFICULTIES[difficulty] - 1
    assert env.episode_length == n
    steps = rollout(env, 7, oracle)
    assert len(steps) == n + 1
    assert [info["phase"] for *_, info in steps] == ["cue"] + ["distractor"] * n
    assert [info["step"] for *_, info in steps] == list(range(n + 1))
    assert [t for _, _, t, _ in steps] == [False] * n + [True]
    assert all("correct" not in info for *_, info in steps[:-1])
    for obs, *_ in steps:
        assert isinstance(obs, np.int64) and env.observation_space.contains(obs)
    final = steps[-1][3]
    assert final["correct"] is True and final["accuracy"] == 1.0
    assert final["answer"] == int(steps[0][0])
    assert all(r == pytest.approx(1 / n) for _, r, *_ in steps[1:])
    assert sum(r for _, r, *_ in steps) == pytest.approx(1.0)
    # Every suit shows up 13 * decks times in the deck: the cue is one card among many.
    counts = np.bincount([int(o) for o, *_ in steps], minlength=4)
    assert counts.tolist() == [13 * DIFFICULTIES[difficulty]] * 4


def test_correct_is_the_last_actions_reward() -> None:
    env = PopgymRepeatFirstEnv()
    obs, _ = env.reset(seed=3)
    first, wrong = int(obs), (int(obs) + 1) % 4
    info: dict[str, Any] = {}
    for i in range(env.episode_length):  # right on every step but the last
        _, reward, terminated, _, info = env.step(wrong if i == env.episode_length - 1 else first)
    assert terminated and reward < 0
    assert info["correct"] is False
    assert info["accuracy"] == pytest.approx((env.episode_length - 1) / env.episode_length)


def test_fixed_action_is_about_chance() -> None:
    env = PopgymRepeatFirstEnv()
    finals = [rollout(env, seed, always_zero)[-1][3] for seed in range(200)]
    rate = np.mean([f["correct"] for f in finals])
    assert 0.15 < rate < 0.35  # chance is 1/4 (the first suit is uniform)
    assert np.mean([f["accuracy"] for f in finals]) == pytest.approx(rate)
