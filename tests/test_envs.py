"""Gymnasium tasks and time wrappers: env_checker, episode contract, seeding, clocks."""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.tasks import text_recall as tr
from envs.tasks.text_recall import TextRecallEnv
from envs.wrappers import ElapsedTimeWrapper, TimestampWrapper, observations_equal
from memory import SimClock, SystemClock

# check_env's advice about wrapped envs and unbounded Boxes is expected here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*different from the unwrapped version"),
    pytest.mark.filterwarnings("ignore:.*Box observation space maximum value is infinity"),
    pytest.mark.filterwarnings("ignore:.*Box observation space minimum value is -infinity"),
]

CONFIGS: list[dict[str, Any]] = [
    {"delay": 0, "n_choices": 2, "category": "colour"},
    {"delay": 4, "n_choices": 4, "category": "object"},
    {"delay": 7, "n_choices": 8, "category": "number", "distractors": False},
    {"delay": 3, "n_choices": 5, "category": "mixed"},
    {"delay": 256, "n_choices": 3, "category": "colour"},
]


def rollout(env: gym.Env[Any, Any], seed: int, actions: list[int]) -> list[tuple[Any, ...]]:
    """(obs, reward, terminated, info) of one episode; actions repeat cyclically."""
    obs, info = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs, 0.0, False, info)]
    terminated = truncated = False
    i = 0
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(actions[i % len(actions)])
        out.append((obs, reward, terminated, info))
        i += 1
    return out


# --- env_checker and registration ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_text_recall_passes_env_checker(kwargs: dict[str, Any]) -> None:
    env = TextRecallEnv(**kwargs)
    check_env(env, skip_render_check=True)
    check_env(gym.make("tempomem/TextRecall-v0", **kwargs, render_mode="ansi").unwrapped)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda env: ElapsedTimeWrapper(env),
        lambda env: ElapsedTimeWrapper(env, dt=0.5, into="info"),
        lambda env: TimestampWrapper(env),
    ],
    ids=["elapsed-obs", "elapsed-info", "timestamp"],
)
def test_wrappers_pass_env_checker(wrap: Any) -> None:
    check_env(wrap(TextRecallEnv(delay=3)), skip_render_check=True)


@pytest.mark.parametrize("env_id", envs.TASK_IDS)
def test_registered_ids_make_and_pass_env_checker(env_id: str) -> None:
    assert env_id.startswith("tempomem/")
    if env_id == "tempomem/TMaze-v0":
        pytest.importorskip("envs.tasks.tmaze")
    if env_id == "tempomem/MiniGridMemory-v0":
        pytest.importorskip("minigrid")
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_registration_is_idempotent_and_import_is_light() -> None:
    importlib.reload(envs)  # registering again must neither fail nor warn
    assert "tempomem/TextRecall-v0" in envs.TASK_IDS and "tempomem/TMaze-v0" in envs.TASK_IDS
    assert envs.ElapsedTimeWrapper is ElapsedTimeWrapper
    assert envs.TimestampWrapper is TimestampWrapper
    code = "import sys, envs; assert not {'torch', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- TextRecallEnv contract ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", CONFIGS[:4])
def test_episode_structure(kwargs: dict[str, Any]) -> None:
    env = TextRecallEnv(**kwargs)
    delay, n = kwargs["delay"], kwargs["n_choices"]
    for seed in range(5):
        steps = rollout(env, seed, [0])
        assert len(steps) == delay + 3  # reset + (delay + 1) steps to the query + 1 graded step
        phases = [info["phase"] for *_, info in steps]
        assert phases == ["cue"] + ["distractor"] * delay + ["query", "done"]
        assert [info["step"] for *_, info in steps] == list(range(delay + 3))
        for obs, _, _, _ in steps:
            assert env.observation_space.contains(obs)
        cue, query = steps[0][0], steps[delay + 1][0]
        assert cue.startswith("Remember this: the ") and cue.endswith(".")
        assert query.startswith("Question: what ")
        choices = steps[delay + 1][3]["choices"]
        assert len(choices) == n == len(set(choices))
        assert query.endswith(f"Options: {', '.join(choices)}.")
        assert all(c == c.strip().lower() for c in choices)
        assert all(not info["choices"] for i, (*_, info) in enumerate(steps) if i != delay + 1)
        final = steps[-1][3]
        answer_word = choices[final["answer"]]
        assert re.search(rf"\b{re.escape(answer_word)}\.$", cue)  # the cue states the answer
        assert sum(re.search(rf"\b{re.escape(c)}\b", cue) is not None for c in choices) == 1
        assert [r for _, r, _, _ in steps[:-1]] == [0.0] * (delay + 2)
        assert [t for _, _, t, _ in steps] == [False] * (delay + 2) + [True]
        if not kwargs.get("distractors", True):
            assert {obs for obs, *_ in steps[1 : delay + 1]} <= {"Nothing happens."}


@pytest.mark.parametrize("category", ["colour", "object", "number"])
def test_cue_and_options_come_from_the_category(category: str) -> None:
    words = {"colour": tr.COLOURS, "object": tr.OBJECTS, "number": tr.NUMBERS}[category]
    env = TextRecallEnv(delay=0, n_choices=8, category=category)
    for seed in range(20):
        steps = rollout(env, seed, [0])
        assert set(steps[1][3]["choices"]) <= set(words)
    cue = env.reset(seed=0)[0]
    expected = {"colour": " is ", "object": " holds a ", "number": " is "}[category]
    assert expected in cue


def test_distractors_are_many_neutral_and_varied() -> None:
    assert len(set(tr.DISTRACTORS)) >= 20
    vocab = {*tr.COLOURS, *tr.OBJECTS, *tr.CONTAINERS, *tr.COLOURED_ITEMS}
    vocab |= {w for item in tr.NUMBERED_ITEMS for w in item.split()}
    for sentence in tr.DISTRACTORS:
        words = set(re.findall(r"[a-z]+", sentence.lower()))
        assert not words & vocab, sentence
        assert not re.search(r"\d", sentence) and len(sentence) <= tr.MAX_LENGTH
    env = TextRecallEnv(delay=50)
    distractors = {obs for obs, *_ in rollout(env, 0, [0])[1:51]}
    assert len(distractors) > 10


def test_mixed_draws_every_category() -> None:
    env = TextRecallEnv(delay=0, category="mixed")
    cues = [env.reset(seed=s)[0] for s in range(60)]
    assert any(" holds a " in c for c in cues)
    assert any(re.search(r" is \d\.$", c) for c in cues)
    assert any(re.search(r" is [a-z]+\.$", c) for c in cues)


@pytest.mark.parametrize("n_choices", [2, 4, 8])
def test_reward_is_one_exactly_for_the_answer(n_choices: int) -> None:
    env = TextRecallEnv(delay=2, n_choices=n_choices, category="mixed")
    for seed in range(10):
        for action in range(n_choices):
            *_, (obs, reward, terminated, info) = rollout(env, seed, [0, 0, 0, action])
            assert terminated and isinstance(reward, float)
            assert reward == (1.0 if action == info["answer"] else 0.0)
            assert info["correct"] is (action == info["answer"])
            assert obs == ("Correct." if info["correct"] else "Incorrect.")


@pytest.mark.parametrize("n_choices", [2, 4])
def test_random_policy_scores_near_chance(n_choices: int) -> None:
    env = TextRecallEnv(delay=1, n_choices=n_choices, category="mixed")
    env.action_space.seed(123)
    answers, total = [], 0.0
    for episode in range(400):
        steps = rollout(env, episode, [int(env.action_space.sample()) for _ in range(3)])
        total += steps[-1][1]
        answers.append(steps[-1][3]["answer"])
    assert abs(total / 400 - 1 / n_choices) < 0.1
    counts = np.bincount(answers, minlength=n_choices) / 400  # the answer position is uniform
    assert np.all(np.abs(counts - 1 / n_choices) < 0.1)


def test_seeded_determinism() -> None:
    for kwargs in CONFIGS[:4]:
        actions = [1, 0, 1]
        a = rollout(TextRecallEnv(**kwargs), 7, actions)
        b = rollout(TextRecallEnv(**kwargs), 7, actions)
        assert a == b
        episodes = [rollout(TextRecallEnv(**kwargs), s, actions) for s in range(8)]
        assert len({str(e) for e in episodes}) > 1
    # Unseeded resets after a seeded one continue the same random stream.
    env1, env2 = TextRecallEnv(category="mixed"), TextRecallEnv(category="mixed")
    env1.reset(seed=3)
    env2.reset(seed=3)
    assert [env1.reset()[0] for _ in range(5)] == [env2.reset()[0] for _ in range(5)]


def test_render_ansi_returns_last_observation() -> None:
    env = TextRecallEnv(delay=1, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs
    obs, *_ = env.step(0)
    assert env.render() == obs
    assert TextRecallEnv().render() is None
    assert gym.make("tempomem/TextRecall-v0", render_mode="ansi").render_mode == "ansi"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": 257}, "delay"),
        ({"delay": 1.5}, "delay"),
        ({"delay": True}, "delay"),
        ({"n_choices": 1}, "n_choices"),
        ({"n_choices": 9}, "n_choices"),
        ({"category": "color"}, "category"),
        ({"distractors": "yes"}, "distractors"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TextRecallEnv(**kwargs)


def test_misuse_of_step() -> None:
    env = TextRecallEnv(delay=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(4)
    env.step(0)
    env.step(0)
    with pytest.raises(RuntimeError, match="ended"):
        env.step(0)


# --- ElapsedTimeWrapper / TimestampWrapper ------------------------------------------------------


class ScriptedClock:
    """A Clock whose readings are given in advance (to make time go backwards)."""

    def __init__(self, readings: list[float]) -> None:
        self._readings = iter(readings)

    def now(self) -> float:
        return next(self._readings)


def test_elapsed_on_the_default_sim_clock() -> None:
    # delay 4 without distractors: cue, 4 x "Nothing happens.", query, verdict.
    env = ElapsedTimeWrapper(TextRecallEnv(delay=4, distractors=False), dt=0.25)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["elapsed"].dtype == np.float32 and obs["elapsed"].tolist() == [0.0, 0.0]
    expected_since_change = [0.0, 0.25, 0.5, 0.75, 0.0, 0.0]  # equal obs at steps 1-4
    for k, since_change in enumerate(expected_since_change, start=1):
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
        assert obs["elapsed"].tolist() == [0.25 * k, since_change], k
    assert env.clock.now() == 1.5
    # A new episode restarts both counters, and the private clock.
    obs, _ = env.reset(seed=1)
    assert obs["elapsed"].tolist() == [0.0, 0.0] and env.clock.now() == 0.0


def test_elapsed_into_info_with_the_default_dt() -> None:
    inner = TextRecallEnv(delay=3, distractors=False)
    env = ElapsedTimeWrapper(inner, into="info")
    assert env.observation_space is inner.observation_space
    obs, info = env.reset(seed=0)
    assert isinstance(obs, str) and info["elapsed_s"] == 0.0 and info["since_change_s"] == 0.0
    for k in range(1, 4):
        obs, _, _, _, info = env.step(0)
        assert info["phase"] == "distractor" and obs == "Nothing happens."
        assert info["elapsed_s"] == pytest.approx(0.05 * k)
        assert info["since_change_s"] == pytest.approx(0.05 * (k - 1))


def test_a_passed_sim_clock_is_shared_and_advanced_only_with_dt() -> None:
    clock = SimClock(start=100.0)
    env = ElapsedTimeWrapper(TextRecallEnv(delay=2), clock=clock, dt=2.0, into="info")
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    assert clock.now() == 102.0 and info["elapsed_s"] == 2.0

    clock = SimClock(start=5.0)
    inner = TextRecallEnv(delay=2, distractors=False)
    env = ElapsedTimeWrapper(inner, clock=clock, dt=None, into="info")
    env.reset(seed=0)
    _, _, _, _, info = env.step(0)
    assert clock.now() == 5.0 and info["elapsed_s"] == 0.0  # read only: the caller moves time
    clock.advance(3.0)
    _, _, _, _, info = env.step(0)
    assert info["elapsed_s"] == 3.0 and info["since_change_s"] == 3.0


def test_system_clock_is_read_not_advanced() -> None:
    env = ElapsedTimeWrapper(TextRecallEnv(delay=3), clock=SystemClock(), into="info")
    env.reset(seed=0)
    previous = 0.0
    for _ in range(3):
        _, _, _, _, info = env.step(0)
        assert 0.0 <= previous <= info["elapsed_s"] < 60.0
        assert 0.0 <= info["since_change_s"] <= info["elapsed_s"]
        previous = info["elapsed_s"]


@pytest.mark.parametrize("wrapper", [ElapsedTimeWrapper, TimestampWrapper])
def test_time_going_backwards_is_an_error(wrapper: Any) -> None:
    env = wrapper(TextRecallEnv(delay=3), clock=ScriptedClock([10.0, 11.0, 10.5]))
    env.reset(seed=0)
    env.step(0)
    with pytest.raises(ValueError, match="backwards"):
        env.step(0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dt": 0}, "dt"),
        ({"dt": -0.1}, "dt"),
        ({"dt": math.nan}, "dt"),
        ({"dt": math.inf}, "dt"),
        ({"dt": "1"}, "dt"),
        ({"dt": True}, "dt"),
        ({"dt": None}, "dt"),  # with clock=None nothing would move time
        ({"into": "obs"}, "into"),
    ],
)
def test_wrapper_bad_arguments_name_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ElapsedTimeWrapper(TextRecallEnv(), **kwargs)
    if "into" not in kwargs:
        with pytest.raises(ValueError, match=name):
            TimestampWrapper(TextRecallEnv(), **kwargs)


def test_a_clock_without_now_is_rejected() -> None:
    with pytest.raises(TypeError, match="clock"):
        ElapsedTimeWrapper(TextRecallEnv(), clock=object())  # type: ignore[arg-type]


def test_timestamp_wrapper_stamps_obs_and_info() -> None:
    env = TimestampWrapper(TextRecallEnv(delay=2), dt=0.5)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(obs["observation"], str) and info["phase"] == "cue"
    assert obs["t"].dtype == np.float64 and obs["t"].tolist() == [0.0] and info["t"] == 0.0
    for k in range(1, 4):
        obs, _, _, _, info = env.step(0)
        assert obs["t"].tolist() == [0.5 * k] and info["t"] == 0.5 * k

    clock = SimClock(start=1_700_000_000.0)
    env = TimestampWrapper(TextRecallEnv(delay=2), clock=clock, dt=None)
    _, info = env.reset(seed=0)
    assert info["t"] == 1_700_000_000.0
    clock.advance(1.0)
    _, _, _, _, info = env.step(0)
    assert info["t"] == 1_700_000_001.0


def test_observations_equal() -> None:
    a = {"image": np.zeros((2, 2)), "text": "x", "items": [1, (2, 3)]}
    assert observations_equal(a, {"image": np.zeros((2, 2)), "text": "x", "items": [1, (2, 3)]})
    assert not observations_equal(a, {**a, "image": np.ones((2, 2))})
    assert not observations_equal(a, {**a, "image": np.zeros((4,))})
    assert not observations_equal(a, {**a, "text": "y"})
    assert not observations_equal(a, {**a, "items": [1, (2, 4)]})
    assert not observations_equal(a, {"image": a["image"]})
    assert observations_equal(np.int64(3), 3) and not observations_equal("3", 3)


def test_elapsed_since_change_with_array_observations() -> None:
    tmaze = pytest.importorskip("envs.tasks.tmaze")
    env = ElapsedTimeWrapper(tmaze.TMazeEnv(), dt=1.0)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(0)
    assert obs["elapsed"][0] == 1.0 and obs["elapsed"][1] == 0.0  # progress changed the vector


# --- MiniGrid adapter (optional dependency) -----------------------------------------------------


def test_minigrid_memory_text_adapter() -> None:
    pytest.importorskip("minigrid")
    from envs.tasks.minigrid_memory import MiniGridMemoryEnv

    env = MiniGridMemoryEnv(render_mode="ansi")
    a = rollout(env, 5, [2, 2, 1, 2, 0, 2])
    b = rollout(MiniGridMemoryEnv(), 5, [2, 2, 1, 2, 0, 2])
    assert a == b
    obs, _ = env.reset(seed=0)
    assert obs.startswith("You face east.") and "Ahead: " in obs and env.render() == obs
    assert "You see: a green " in obs  # the start-room object or the two at the split
    for step in a:
        assert env.observation_space.contains(step[0])
    with pytest.raises(ValueError, match="size"):
        MiniGridMemoryEnv(size=8)
    with pytest.raises(ValueError, match="action"):
        env.step(3)
