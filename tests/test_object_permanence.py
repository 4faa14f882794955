"""tempomem/ObjectPermanence-v0: the contract, seeding, the occlusion and the chance level."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs.evaluation import wilson_interval
from envs.tasks import object_permanence as op
from envs.tasks.object_permanence import ObjectPermanenceEnv

ENV_ID = "tempomem/ObjectPermanence-v0"


def rollout(env: ObjectPermanenceEnv, seed: int, action: int = 0) -> list[tuple[Any, ...]]:
    """(image, instruction, reward, terminated, info) per observation of one episode."""
    obs, info = env.reset(seed=seed)
    out: list[tuple[Any, ...]] = [(obs["image"], obs["instruction"], 0.0, False, info)]
    terminated = False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        out.append((obs["image"], obs["instruction"], reward, terminated, info))
    return out


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"delay": 0, "distractors": 0}, {"delay": 9, "distractors": 5, "reveal": 3}],
)
def test_passes_the_gymnasium_checker_registered_and_direct(kwargs: dict[str, Any]) -> None:
    assert ENV_ID in envs.TASK_IDS
    check_env(ObjectPermanenceEnv(**kwargs, render_mode="rgb_array"))
    env = gym.make(ENV_ID, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_episode_shows_the_blocks_then_identical_cups_and_grades_the_last_action() -> None:
    env = ObjectPermanenceEnv(delay=3, distractors=2, reveal=2)
    trace = rollout(env, seed=4)
    assert len(trace) == 1 + env.episode_steps == 1 + 2 + 3 + 1
    phases = [step[-1]["phase"] for step in trace]
    assert phases == ["visible"] * 2 + ["occluded"] * 4 + ["done"]
    assert [step[-1]["step"] for step in trace] == list(range(7))
    shown = [op.decode_cells(step[0]) for step in trace[:-1]]
    objects = np.flatnonzero(env.cells)
    assert len(objects) == 3 and env.cells[env.target_cell] == op.CONTENTS.index(env.target_colour)
    for cells in shown[:2]:  # the blocks themselves, each a different colour
        assert np.array_equal(cells, env.cells) and len(set(cells[objects].tolist())) == 3
    for image in (step[0] for step in trace[2:-1]):  # cups over exactly the blocks, all alike
        assert np.array_equal(image, trace[2][0])
        assert np.array_equal(np.flatnonzero(op.decode_cells(image) == op.CUP), objects)
    assert {step[1] for step in trace} == {f"pick up the {env.target_colour} block"}
    assert all(step[2] == 0.0 and not step[3] for step in trace[:-1])
    assert trace[-1][-1]["answer"] == env.target_cell


def test_reward_is_for_the_target_cell_only_and_occlude_false_keeps_it_visible() -> None:
    for seed in range(8):
        env = ObjectPermanenceEnv(delay=1, distractors=3)
        env.reset(seed=seed)
        for action in range(op.CELLS):
            *_, (_, _, reward, terminated, info) = rollout(env, seed=seed, action=action)
            assert terminated and info["correct"] == (action == env.target_cell)
            assert reward == (1.0 if action == env.target_cell else 0.0)
    visible = ObjectPermanenceEnv(delay=5, occlude=False)
    trace = rollout(visible, seed=0)
    assert {step[-1]["phase"] for step in trace[:-1]} == {"visible"}
    assert all(np.array_equal(op.decode_cells(step[0]), visible.cells) for step in trace[:-1])


def test_is_deterministic_per_seed_and_draws_every_cell_and_colour() -> None:
    a, b = ObjectPermanenceEnv(), ObjectPermanenceEnv()
    first, second = rollout(a, seed=11), rollout(b, seed=11)
    for x, y in zip(first, second, strict=True):
        assert np.array_equal(x[0], y[0]) and x[1:] == y[1:]
    targets, colours = set(), set()
    for seed in range(300):
        a.reset(seed=seed)
        targets.add(a.target_cell)
        colours.add(a.target_colour)
    assert targets == set(range(op.CELLS)) and colours == set(op.COLOURS)


@pytest.mark.parametrize("distractors", [0, 2, 5])
def test_a_memoryless_pick_among_the_cups_is_at_the_stated_chance_level(distractors: int) -> None:
    """Always taking the first cup (row-major) wins exactly when the target happens to be
    under it: chance_level within the 95 % interval of 2000 seeded episodes."""
    env = ObjectPermanenceEnv(delay=1, distractors=distractors)
    episodes, wins = 2000, 0
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        for _ in range(env.episode_steps - 1):
            obs, *_ = env.step(0)
        cups = np.flatnonzero(op.decode_cells(obs["image"]) == op.CUP)
        assert len(cups) == 1 + distractors
        *_, reward, terminated, _, _ = env.step(int(cups[0]))
        assert terminated
        wins += int(reward)
    low, high = wilson_interval(wins, episodes)
    assert env.chance_level == pytest.approx(1 / (1 + distractors))
    assert low <= env.chance_level <= high


def test_the_scripted_expert_solves_visible_scenes_and_spreads_over_cups_when_covered() -> None:
    for seed in range(100):
        env = ObjectPermanenceEnv(delay=2, distractors=seed % 6)
        obs, info = env.reset(seed=seed)
        probs = op.expert_action_probs(obs)
        assert probs[env.target_cell] == 1.0  # visible: the target's cell
        while info["phase"] != "occluded":
            obs, _, _, _, info = env.step(int(probs.argmax()))
        covered = op.expert_action_probs(obs)
        objects = np.flatnonzero(env.cells)
        assert np.allclose(covered[objects], 1 / len(objects))
        assert covered.sum() == pytest.approx(1.0)


def test_renders_and_rejects_bad_input() -> None:
    env = ObjectPermanenceEnv(delay=1, render_mode="ansi")
    env.reset(seed=0)
    picture = env.render()
    assert isinstance(picture, str) and len(picture.splitlines()) == op.GRID
    assert env.target_colour[0].upper() in picture
    env.step(0)
    env.step(0)
    assert "U" in env.render()  # type: ignore[operator]
    with pytest.raises(ValueError, match="action"):
        env.step(op.CELLS)
    for name, bad in (
        ("delay", -1),
        ("delay", 257),
        ("distractors", 6),
        ("reveal", 0),
        ("delay", 2.0),
        ("distractors", True),
    ):
        with pytest.raises(ValueError, match=name):
            ObjectPermanenceEnv(**{name: bad})
    with pytest.raises(ValueError, match="occlude"):
        ObjectPermanenceEnv(occlude="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="render_mode"):
        ObjectPermanenceEnv(render_mode="human")
    with pytest.raises(RuntimeError, match="reset"):
        ObjectPermanenceEnv().step(0)
    for image in (np.zeros((8, 8, 3)), np.full((16, 16, 3), np.nan), "pixels", [[1, 2]]):
        with pytest.raises(ValueError, match="image"):
            op.decode_cells(image)
    with pytest.raises(ValueError, match="image"):
        op.decode_cells(np.full((16, 16, 3), 256.0))


def test_decodes_every_common_image_format_alike() -> None:
    env = ObjectPermanenceEnv(delay=1, distractors=5)
    obs, _ = env.reset(seed=3)
    image = obs["image"]
    expected = op.decode_cells(image)
    assert (expected == env.cells).all()  # visible: the scene itself
    for same in (
        image.astype(np.float32),  # floats in [0, 255]
        image.astype(np.float64) / 255.0,  # floats in [0, 1]
        image.transpose(2, 0, 1),  # channels first
        torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0,  # a torch image
        image.tolist(),  # nested lists
    ):
        assert (op.decode_cells(same) == expected).all()
    with pytest.raises(ValueError, match="colour"):
        op.instruction_colour("pick up the block")
