"""Vector cue-delay T-maze: see a cue at the start, walk a corridor, turn the cued way.

Observation (4,) float32 in [0, 1]: ``[cue_left, cue_right, at_junction, progress]`` with
``progress = position / corridor_length``. Action: 0 = left, 1 = right. In the corridor any
action steps forward (reward 0); at the junction (``position == corridor_length``) the action
is graded (reward 1.0 iff it equals the cue) and the episode terminates, so an episode has
``corridor_length + 1`` steps. With ``cue_visible="start"`` the cue is shown only at position 0,
so the junction decision needs memory; ``"always"`` shows it on every step (fully observable,
for training a memoryless policy).
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CueVisibility = Literal["start", "always"]
CUE_VISIBILITIES: tuple[str, ...] = ("start", "always")
MAX_CORRIDOR_LENGTH = 256
LEFT, RIGHT = 0, 1


class TMazeEnv(gym.Env[np.ndarray, np.int64]):
    """Cue-delay T-maze with a vector observation.

    Args:
        corridor_length: steps from the cue to the junction, in [1, 256].
        cue_visible: "start" (cue only at position 0) or "always" (cue on every step).
        render_mode: None or "ansi" (``render()`` returns a one-line picture).

    info on reset and step: ``{"phase": "cue"|"corridor"|"junction"|"done", "step": int}``
    (phase of the state the observation shows); the graded step adds ``"correct": bool`` and
    ``"answer": int`` (the cued action).
    """

    # gymnasium declares metadata as a plain class attribute, which ClassVar cannot override.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        corridor_length: int = 4,
        cue_visible: str = "start",
        render_mode: str | None = None,
    ) -> None:
        if (
            isinstance(corridor_length, bool)
            or not isinstance(corridor_length, int | np.integer)
            or not 1 <= corridor_length <= MAX_CORRIDOR_LENGTH
        ):
            raise ValueError(
                f"corridor_length must be an int in [1, {MAX_CORRIDOR_LENGTH}], "
                f"got {corridor_length!r}"
            )
        if cue_visible not in CUE_VISIBILITIES:
            raise ValueError(f"cue_visible must be one of {CUE_VISIBILITIES}, got {cue_visible!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.corridor_length = int(corridor_length)
        self.cue_visible = cue_visible
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.cue: int = LEFT
        self.position = 0
        self.steps = 0
        self._done = True  # step() before reset() is an error

    # ------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        self.position = 0
        self.steps = 0
        self._done = False
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("TMazeEnv.step() called on a finished episode; call reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (left) or 1 (right), got {action!r}")
        self.steps += 1
        if self.position < self.corridor_length:
            self.position += 1
            return self._obs(), 0.0, False, False, self._info()
        correct = int(action) == self.cue
        self._done = True
        info = self._info()
        info.update(correct=correct, answer=self.cue)
        return self._obs(), 1.0 if correct else 0.0, True, False, info

    def render(self) -> str | None:
        """ "ansi": e.g. ``cue=L |S..@.J|`` (S start, @ agent, J junction; cue hidden -> ``?``)."""
        if self.render_mode != "ansi":
            return None
        cells = ["."] * (self.corridor_length + 1)
        cells[0], cells[-1] = "S", "J"
        cells[self.position] = "*" if self._done else "@"
        shown = self._cue_shown()
        cue = ("L" if self.cue == LEFT else "R") if shown else "?"
        return f"cue={cue} |{''.join(cells)}|"

    # ------------------------------------------------------------------------- helpers

    def _cue_shown(self) -> bool:
        return self.cue_visible == "always" or self.position == 0

    def _phase(self) -> str:
        if self._done:
            return "done"
        if self.position == self.corridor_length:
            return "junction"
        return "cue" if self.position == 0 else "corridor"

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, dtype=np.float32)
        if self._cue_shown():
            obs[self.cue] = 1.0
        obs[2] = 1.0 if self.position == self.corridor_length else 0.0
        obs[3] = self.position / self.corridor_length
        return obs

    def _info(self) -> dict[str, Any]:
        return {"phase": self._phase(), "step": self.steps}
