"""Object permanence on a tabletop: see where the target is, then find it under a cup.

A 4 x 4 grid of cells (``GRID``) is rendered as an RGB image of ``PATCH`` x ``PATCH`` pixel
patches, one per cell: bare table, a coloured block, or a grey cup. The instruction names the
target's colour ("pick up the red block"); ``distractors`` blocks of other colours lie elsewhere.
An episode, with ``reveal = R`` and ``delay = D``::

    reset(), step() x (R - 1)  -> every block visible                            phase "visible"
    step() x D                 -> a cup over every block: the blocks look alike   phase "occluded"
    step()                     -> still covered; this observation's action is
                                  graded (pick the cell of the target)           phase "occluded"
    -> reward 1.0 iff the last action is the target's cell; terminated           phase "done"

so an episode has ``R + D + 1`` steps; the target was last seen ``D + 1`` steps before the
graded decision. Actions are cells (``Discrete(16)``, row-major) at every step, as a robot
policy reaches every tick; only the last is graded. With ``occlude=False`` the cups never come
(every step shows the blocks: the fully observable version, for training and for a policy's
ceiling).

Chance: a policy that cannot remember picks one of the ``1 + distractors`` cups; uniformly at
random that wins ``1 / (1 + distractors)`` (``chance_level``). A random cell wins 1/16.

Observation: ``{"image": uint8 (16, 16, 3), "instruction": str}``. Every ``info`` has ``phase``
and ``step`` (step() calls since reset); the graded step adds ``correct`` and ``answer`` (the
target's cell). All randomness comes from the env's ``np_random``: one seed, one episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GRID = 4  # cells per side
CELLS = GRID * GRID
PATCH = 4  # pixels per patch side
IMAGE_SIZE = GRID * PATCH
MAX_DELAY = 256
MAX_REVEAL = 16

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
}
TABLE_RGB = (205, 180, 140)
CUP_RGB = (110, 110, 120)
CUP_RIM_RGB = (70, 70, 80)
#: What a cell can show: its code is the index here.
CONTENTS: tuple[str, ...] = ("empty", "cup", *COLOURS)
EMPTY, CUP = 0, 1
MAX_DISTRACTORS = len(COLOURS) - 1
INSTRUCTION_TEMPLATE = "pick up the {colour} block"
INSTRUCTION_CHARSET = "abcdefghijklmnopqrstuvwxyz "
INSTRUCTION_MAX_LENGTH = 64


def render_patch(content: int) -> np.ndarray:
    """The ``(PATCH, PATCH, 3)`` uint8 picture of one cell showing ``CONTENTS[content]``:
    bare table; a block (a 2 x 2 square of its colour on the table); a cup (grey, dark rim)."""
    if not 0 <= content < len(CONTENTS):
        raise ValueError(f"content must be in [0, {len(CONTENTS)}), got {content!r}")
    patch = np.empty((PATCH, PATCH, 3), dtype=np.uint8)
    patch[:] = TABLE_RGB
    if content == CUP:
        patch[:] = CUP_RIM_RGB
        patch[1:-1, 1:-1] = CUP_RGB
    elif content != EMPTY:
        patch[1:-1, 1:-1] = COLOURS[CONTENTS[content]]
    return patch


def render_cells(cells: np.ndarray) -> np.ndarray:
    """The ``(IMAGE_SIZE, IMAGE_SIZE, 3)`` uint8 image of ``cells`` (``CELLS`` content codes,
    row-major)."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for cell, content in enumerate(cells.tolist()):
        row, col = divmod(cell, GRID)
        image[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = render_patch(
            content
        )
    return image


_TEMPLATES = np.stack([render_patch(c) for c in range(len(CONTENTS))]).astype(np.int32)


def decode_cells(image: Any) -> np.ndarray:
    """The ``CELLS`` content codes an image shows (row-major): each patch is matched to the
    nearest of the rendered patch templates (a fixed codebook, squared pixel distance).

    Takes the common image layouts: ``(H, W, 3)`` or channels-first ``(3, H, W)`` (a torch
    image), as a numpy array, a CPU tensor or nested lists; integers in [0, 255], or floats in
    [0, 1] (scaled by 255) or [0, 255]. Raises ``ValueError`` for any other shape, a
    non-numeric dtype, NaN or infinity, or values outside those ranges.
    """
    try:
        pixels = np.asarray(image)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"image must be an array-like RGB image: {err}") from None
    if pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE):
        pixels = pixels.transpose(1, 2, 0)
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or not (
        np.issubdtype(pixels.dtype, np.number)
        and not np.issubdtype(pixels.dtype, np.complexfloating)
    ):
        raise ValueError(
            f"image must be a ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) or (3, {IMAGE_SIZE}, {IMAGE_SIZE}) "
            f"RGB array, got shape {getattr(pixels, 'shape', None)} dtype "
            f"{getattr(pixels, 'dtype', None)}"
        )
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("image values must be finite and in [0, 255] (or [0, 1] as floats)")
    if np.issubdtype(pixels.dtype, np.floating) and pixels.max() <= 1.0:
        pixels = pixels * 255.0
    patches = (
        np.rint(pixels)
        .astype(np.int32)
        .reshape(GRID, PATCH, GRID, PATCH, 3)
        .transpose(0, 2, 1, 3, 4)
        .reshape(CELLS, 1, PATCH, PATCH, 3)
    )
    distances = ((patches - _TEMPLATES[None]) ** 2).sum(axis=(2, 3, 4))  # (CELLS, codes)
    return distances.argmin(axis=1).astype(np.int64)


def instruction_colour(instruction: str) -> str:
    """The target colour an instruction names ("pick up the red block" -> "red")."""
    words = str(instruction).split()
    named = [word for word in words if word in COLOURS]
    if len(named) != 1:
        raise ValueError(
            f"instruction must name exactly one colour of {tuple(COLOURS)}, got {instruction!r}"
        )
    return named[0]


def expert_action_probs(obs: dict[str, Any]) -> np.ndarray:
    """The scripted expert: ``(CELLS,)`` action probabilities for one observation.

    The cell showing the instruction's colour when it is visible (probability 1); otherwise
    (the blocks are covered) uniform over the cups, the best any memoryless policy can do;
    uniform over all cells if there is neither.
    """
    cells = decode_cells(obs["image"])
    colour_code = CONTENTS.index(instruction_colour(obs["instruction"]))
    probs = np.zeros(CELLS, dtype=np.float64)
    seen = np.flatnonzero(cells == colour_code)
    if seen.size:
        probs[seen] = 1.0
    else:
        cups = np.flatnonzero(cells == CUP)
        probs[cups if cups.size else slice(None)] = 1.0
    return probs / probs.sum()


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not is_int or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


class ObjectPermanenceEnv(gym.Env[dict[str, Any], np.int64]):
    """Find the target block under one of ``1 + distractors`` identical cups.

    Args:
        delay: occluded steps between the last visible frame and the graded one, in [0, 256].
        distractors: blocks of other colours, in [0, 5].
        reveal: visible steps at the start, in [1, 16].
        occlude: False keeps the blocks visible to the end (no cups).
        render_mode: None, "rgb_array" (the observation's image) or "ansi" (a 4-line picture).
    """

    # gymnasium declares metadata as a plain class attribute, which ClassVar cannot override.
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        delay: int = 4,
        distractors: int = 2,
        reveal: int = 2,
        occlude: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.delay = _check_int("delay", delay, 0, MAX_DELAY)
        self.distractors = _check_int("distractors", distractors, 0, MAX_DISTRACTORS)
        self.reveal = _check_int("reveal", reveal, 1, MAX_REVEAL)
        if not isinstance(occlude, bool):
            raise ValueError(f"occlude must be a bool, got {occlude!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.occlude = occlude
        self.render_mode = render_mode
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
                "instruction": spaces.Text(
                    INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET
                ),
            }
        )
        self.action_space = spaces.Discrete(CELLS)
        self.cells = np.zeros(CELLS, dtype=np.int64)  # the scene as it is (blocks uncovered)
        self.target_cell = 0
        self.target_colour = next(iter(COLOURS))
        self.steps = 0
        self._done = True  # step() before reset() is an error

    @property
    def episode_steps(self) -> int:
        """Steps per episode: ``reveal + delay + 1``."""
        return self.reveal + self.delay + 1

    @property
    def chance_level(self) -> float:
        """Success of picking one of the cups uniformly at random: ``1 / (1 + distractors)``."""
        return 1.0 / (1 + self.distractors)

    # ------------------------------------------------------------------------- gym API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        placed = rng.choice(CELLS, size=1 + self.distractors, replace=False)
        colours = rng.choice(len(COLOURS), size=1 + self.distractors, replace=False)
        self.cells = np.zeros(CELLS, dtype=np.int64)
        self.cells[placed] = 2 + colours  # CONTENTS index of each colour
        self.target_cell = int(placed[0])
        self.target_colour = CONTENTS[2 + int(colours[0])]
        self.steps = 0
        self._done = False
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("ObjectPermanenceEnv.step() called on a finished episode; reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be a cell in [0, {CELLS}), got {action!r}")
        self.steps += 1
        if self.steps < self.episode_steps:
            return self._obs(), 0.0, False, False, self._info()
        correct = int(action) == self.target_cell
        self._done = True
        info = self._info()
        info.update(correct=correct, answer=self.target_cell)
        return self._obs(), 1.0 if correct else 0.0, True, False, info

    def render(self) -> Any:
        """Mode "rgb_array": the image; "ansi": one letter per cell (``.`` table, ``U`` cup, else
        the colour's initial, the target's in upper case)."""
        if self.render_mode == "rgb_array":
            return render_cells(self._shown_cells())
        if self.render_mode != "ansi":
            return None
        letters = []
        for cell, content in enumerate(self._shown_cells().tolist()):
            letter = "." if content == EMPTY else "U" if content == CUP else CONTENTS[content][0]
            letters.append(letter.upper() if cell == self.target_cell and content > CUP else letter)
        rows = ["".join(letters[r * GRID : (r + 1) * GRID]) for r in range(GRID)]
        return "\n".join(rows)

    # ------------------------------------------------------------------------- helpers

    def _covered(self) -> bool:
        return self.occlude and self.steps >= self.reveal

    def _shown_cells(self) -> np.ndarray:
        if not self._covered():
            return self.cells.copy()
        return np.where(self.cells == EMPTY, EMPTY, CUP)

    def _obs(self) -> dict[str, Any]:
        return {
            "image": render_cells(self._shown_cells()),
            "instruction": INSTRUCTION_TEMPLATE.format(colour=self.target_colour),
        }

    def _info(self) -> dict[str, Any]:
        phase = "done" if self._done else "occluded" if self._covered() else "visible"
        return {"phase": phase, "step": self.steps}
