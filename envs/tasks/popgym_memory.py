"""POPGym's RepeatFirst memory task (``popgym.envs.repeat_first``) as a clean gymnasium 1.x env.

A shuffled deck of ``52 * num_decks`` cards is dealt one card per step, and the agent sees only
each card's suit. At every step the agent must output the suit of the FIRST card of the episode
(the one shown by ``reset()``); the cards after it are distractors. So only memory of the first
observation beats chance (1/4)::

    reset()          -> suit of card 1          phase "cue"
    step(a) x N - 1  -> suit of cards 2 .. N    phase "distractor"; the (N-1)-th step terminates

Observation: ``Discrete(4)``, the suit index as ``np.int64`` (POPGym's order: 0 = spades,
1 = diamonds, 2 = clubs, 3 = hearts). Action: ``Discrete(4)``, the same suit indices.
Difficulty picks POPGym's deck count: ``"easy"`` 1 deck (51 steps), ``"medium"`` 8 decks
(415 steps), ``"hard"`` 16 decks (831 steps).

Reward is POPGym's: ``+1 / (N - 1)`` when the action equals the first card's suit, else
``-1 / (N - 1)`` (``N = 52 * num_decks``), so an episode's return is in ``[-1, 1]``.

Every ``info`` has ``phase`` ("cue" for the reset observation, "distractor" after) and ``step``
(step() calls since reset). The terminating step adds ``correct`` (True iff POPGym's reward for
that last step is positive, i.e. the episode's last action equals the first card's suit),
``answer`` (the first card's suit) and ``accuracy`` (the fraction of the episode's steps with a
positive reward). All randomness comes from the env's ``np_random``: one seed, one episode.

Needs the optional ``popgym`` package (``pip install tempomem[popgym]``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from popgym.envs.repeat_first import RepeatFirst

#: POPGym's deck count per difficulty (RepeatFirstEasy / Medium / Hard).
DIFFICULTIES: dict[str, int] = {"easy": 1, "medium": 8, "hard": 16}
#: Suit names in POPGym's suit-index order.
SUITS = ("spades", "diamonds", "clubs", "hearts")


class PopgymRepeatFirstEnv(gym.Env[np.int64, np.int64]):
    """Output the suit of the episode's first card at every step (POPGym RepeatFirst).

    Args:
        difficulty: ``"easy"`` (1 deck), ``"medium"`` (8 decks) or ``"hard"`` (16 decks).
        render_mode: None or ``"ansi"`` (``render()`` returns a line naming the last suit seen
            and the first suit).
    """

    # gymnasium declares metadata as a plain class attribute, which ClassVar cannot override.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(self, difficulty: str = "easy", render_mode: str | None = None) -> None:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {tuple(DIFFICULTIES)}, got {difficulty!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.difficulty = difficulty
        self.render_mode = render_mode
        self._game = RepeatFirst(num_decks=DIFFICULTIES[difficulty])
        #: Steps per episode (cards dealt after the first).
        self.episode_length = int(self._game.max_episode_length)
        self.observation_space = spaces.Discrete(len(SUITS))
        self.action_space = spaces.Discrete(len(SUITS))
        self._step = -1  # -1: reset() not called yet
        self._done = False
        self._answer = 0
        self._last_obs = 0
        self._n_correct = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        obs, _ = self._game.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._answer = int(self._game.card)
        self._step = 0
        self._done = False
        self._n_correct = 0
        return self._observe(obs), self._info()

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        if self._step < 0:
            raise RuntimeError("PopgymRepeatFirstEnv.step() called before reset()")
        if self._done:
            raise RuntimeError("PopgymRepeatFirstEnv.step() called after the episode ended")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {len(SUITS)}), got {action!r}")
        obs, reward, terminated, truncated, _ = self._game.step(int(action))
        self._step += 1
        self._n_correct += float(reward) > 0
        info = self._info()
        if terminated:
            self._done = True
            info["correct"] = float(reward) > 0
            info["answer"] = self._answer
            info["accuracy"] = self._n_correct / self._step
        return self._observe(obs), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return f"Card {self._step + 1}: {SUITS[self._last_obs]} (first: {SUITS[self._answer]})"

    def _observe(self, suit: Any) -> np.int64:
        self._last_obs = int(suit)
        return np.int64(self._last_obs)

    def _info(self) -> dict[str, Any]:
        return {"phase": "cue" if self._step == 0 else "distractor", "step": self._step}
