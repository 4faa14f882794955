"""MiniGrid's Memory task (``MiniGrid-MemoryS7-v0``) told in text, so text policies can play it.

The agent starts in a small room next to a green key or ball, walks an east-bound hallway and
must step next to the matching object at the split at its end (MiniGrid's own rules, rewards
and time limit). Each observation is one line describing the agent's 7x7 egocentric view::

    "You face east. Ahead: open for 2 steps, then a wall. Left: wall. Right: open.
     You see: a green key 1 ahead and 2 left."

(one line in practice). "Ahead" counts free cells straight ahead and names what ends them;
"Left"/"Right" are the cells beside the agent; "You see" lists up to 6 visible objects (not
walls) as offsets ahead/left/right of the agent. Actions: 0 = turn left, 1 = turn right,
2 = move forward (MiniGrid's first three; the others do nothing in this task).

Needs the optional ``minigrid`` package (``pip install tempomem[minigrid]``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT
from minigrid.envs import MemoryEnv

from envs.tasks.text_recall import CHARSET, MAX_LENGTH
from memory.numbers import is_int

DIRECTIONS = ("east", "south", "west", "north")
FREE = ("empty", "floor")
MAX_LISTED = 6


class MiniGridMemoryEnv(gym.Env[str, np.int64]):
    """MiniGrid Memory (default size 7, i.e. MemoryS7) with text observations.

    Args:
        size: grid size, odd, in ``[7, 31]`` (MiniGrid's MemoryS7 is 7).
        max_steps: MiniGrid's time limit (truncation); None = MiniGrid's default ``5 * size**2``.
        render_mode: None or ``"ansi"`` (``render()`` returns the last observation).

    Reward is MiniGrid's (``1 - 0.9 * steps / max_steps`` at the matching object, else 0).
    info: ``{"step": int, "direction": str}``; a terminating step adds ``"correct": bool``.
    """

    # gymnasium declares metadata as a plain class attribute, which ClassVar cannot override.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self, size: int = 7, max_steps: int | None = None, render_mode: str | None = None
    ) -> None:
        if not is_int(size) or not 7 <= size <= 31:
            raise ValueError(f"size must be an int in [7, 31], got {size!r}")
        if size % 2 == 0:
            raise ValueError(f"size must be odd (the hallway runs along the middle), got {size}")
        if max_steps is not None and (isinstance(max_steps, bool) or int(max_steps) < 1):
            raise ValueError(f"max_steps must be None or an int >= 1, got {max_steps!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        self._grid = MemoryEnv(size=size, max_steps=max_steps)
        self.observation_space = spaces.Text(max_length=MAX_LENGTH, charset=CHARSET)
        self.action_space = spaces.Discrete(3)
        self._step = 0
        self._last_obs = ""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        obs, _ = self._grid.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._step = 0
        return self._describe(obs), self._info()

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (left), 1 (right) or 2 (forward), got {action!r}")
        obs, reward, terminated, truncated, _ = self._grid.step(int(action))
        self._step += 1
        info = self._info()
        if terminated:
            info["correct"] = float(reward) > 0
        return self._describe(obs), float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def close(self) -> None:
        self._grid.close()

    def _info(self) -> dict[str, Any]:
        return {"step": self._step, "direction": DIRECTIONS[int(self._grid.agent_dir)]}

    def _describe(self, obs: dict[str, Any]) -> str:
        text = describe_view(obs["image"], int(obs["direction"]))
        self._last_obs = text
        return text


def describe_view(image: np.ndarray, direction: int) -> str:
    """One line of English for a MiniGrid egocentric view (``image[x, y] = (object, colour,
    state)``, the agent at the bottom middle facing up)."""
    width, height = image.shape[0], image.shape[1]
    ax, ay = width // 2, height - 1

    def name(x: int, y: int) -> str:
        obj, colour = IDX_TO_OBJECT[int(image[x, y, 0])], IDX_TO_COLOR[int(image[x, y, 1])]
        if obj == "unseen":
            return "out of sight"
        if obj in FREE:
            return "open"
        return obj if obj == "wall" else f"a {colour} {obj}"

    free = 0
    while ay - free - 1 >= 0 and name(ax, ay - free - 1) == "open":
        free += 1
    blocker = "the edge of view" if ay - free - 1 < 0 else name(ax, ay - free - 1)
    article = "a " if blocker == "wall" else ""
    steps = "1 step" if free == 1 else f"{free} steps"
    ahead = f"open for {steps}, then {article}{blocker}" if free else f"{article}{blocker}"
    seen: list[str] = []
    for y in range(height - 1, -1, -1):
        for x in range(width):
            obj = IDX_TO_OBJECT[int(image[x, y, 0])]
            if obj in ("unseen", "wall", "agent", *FREE) or len(seen) >= MAX_LISTED:
                continue
            offsets = [f"{ay - y} ahead"] if y != ay else []
            if x != ax:
                offsets.append(f"{abs(x - ax)} {'left' if x < ax else 'right'}")
            seen.append(f"{name(x, y)} {' and '.join(offsets) or 'here'}")
    parts = [
        f"You face {DIRECTIONS[direction % 4]}.",
        f"Ahead: {ahead}.",
        f"Left: {name(ax - 1, ay)}.",
        f"Right: {name(ax + 1, ay)}.",
        f"You see: {'; '.join(seen)}." if seen else "You see no objects.",
    ]
    return " ".join(parts)
