"""Text cue-recall: a non-Markovian task for text (LLM) policies.

An episode, with ``delay = D``::

    reset()            -> cue         "Remember this: the key is red."          phase "cue"
    step() x D         -> distractor  "The hallway is quiet."                   phase "distractor"
    step()             -> query       "Question: what colour was the key?
                                       Options: red, blue, green, yellow."       phase "query"
    step(action)       -> graded      "Correct." / "Incorrect."                 phase "done"

So an episode shows ``D + 2`` task observations (cue, D distractors, query): ``D + 1`` steps
lead from the cue to the query, and one more step, the answer, is graded (reward 1.0 when the
action is the index of the cue's word among the query's options, else 0.0) and terminates.
Actions before the query are ignored (reward 0.0). Only memory of the cue can beat chance
(``1 / n_choices``) at the query.

Every ``info`` has ``phase``, ``step`` (step() calls since reset) and ``choices`` (the option
words at the query, ``[]`` otherwise); the graded step adds ``correct`` and ``answer`` (the index
of the right option). All randomness comes from the env's ``np_random``: one seed, one episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from memory.numbers import is_int

#: Printable ASCII, space and punctuation included: the charset of every observation.
CHARSET = "".join(chr(c) for c in range(32, 127))
MAX_LENGTH = 512
MIN_CHOICES, MAX_CHOICES = 2, 8
MAX_DELAY = 256
CATEGORIES = ("colour", "object", "number", "mixed")

COLOURS = (
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "pink",
    "brown",
    "orange",
    "purple",
    "grey",
)
# Every object starts with a consonant sound, so "a <object>" always reads right.
OBJECTS = (
    "lamp",
    "book",
    "shoe",
    "coin",
    "spoon",
    "pen",
    "ring",
    "bell",
    "sock",
    "fork",
    "comb",
    "map",
    "candle",
    "stone",
    "leaf",
    "shell",
)
NUMBERS = tuple(str(n) for n in range(1, 10))

# What the cue is about: things that have a colour, containers, things that have a number.
COLOURED_ITEMS = ("key", "box", "ball", "cup", "hat", "car", "bag", "kite")
CONTAINERS = ("box", "bag", "drawer", "basket", "chest", "jar")
NUMBERED_ITEMS = ("code", "locker number", "seat number", "page number")

#: Neutral sentences: no word of the vocabularies above, no digits.
DISTRACTORS = (
    "The hallway is quiet.",
    "A door closes somewhere.",
    "The wind moves the curtains.",
    "Someone laughs in the next room.",
    "The floor creaks a little.",
    "Rain taps on the window.",
    "A clock ticks on the wall.",
    "The lights hum softly.",
    "Footsteps pass outside.",
    "A bird sings far away.",
    "The air smells of coffee.",
    "A phone buzzes and stops.",
    "The room feels warm.",
    "Water drips in the sink.",
    "A horn sounds in the street.",
    "The radio plays a slow song.",
    "Leaves rustle in the garden.",
    "A dog barks twice.",
    "The fridge starts to hum.",
    "Somebody coughs down the hall.",
    "The stairs are empty.",
    "A train passes in the distance.",
    "The sun comes out for a moment.",
    "Dust floats in the light.",
)
NO_DISTRACTOR = "Nothing happens."


class TextRecallEnv(gym.Env[str, np.int64]):
    """Remember a cue through ``delay`` distractor sentences, then answer a multiple-choice query.

    Args:
        delay: distractor steps between cue and query, in ``[0, 256]``.
        n_choices: options at the query (the action space size), in ``[2, 8]``.
        category: ``"colour"`` ("the key is red"), ``"object"`` ("the box holds a lamp"),
            ``"number"`` ("the code is 7") or ``"mixed"`` (one of those three per episode).
        distractors: False replaces every distractor sentence by "Nothing happens.".
        render_mode: None or ``"ansi"`` (``render()`` returns the last observation).
    """

    # gymnasium declares metadata as a plain class attribute, which ClassVar cannot override.
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012

    def __init__(
        self,
        delay: int = 4,
        n_choices: int = 4,
        category: str = "colour",
        distractors: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.delay = _int_in_range("delay", delay, 0, MAX_DELAY)
        self.n_choices = _int_in_range("n_choices", n_choices, MIN_CHOICES, MAX_CHOICES)
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
        if not isinstance(distractors, bool | np.bool_):
            raise ValueError(f"distractors must be a bool, got {distractors!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.category = category
        self.distractors = bool(distractors)
        self.render_mode = render_mode
        self.observation_space = spaces.Text(max_length=MAX_LENGTH, charset=CHARSET)
        self.action_space = spaces.Discrete(self.n_choices)

        self._step = -1  # -1: reset() not called yet
        self._sentences: list[str] = []  # cue, distractors, query
        self._choices: list[str] = []
        self._answer = 0
        self._last_obs = ""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        category = self.category
        if category == "mixed":
            category = str(rng.choice(CATEGORIES[:3]))
        words = {"colour": COLOURS, "object": OBJECTS, "number": NUMBERS}[category]
        picked = rng.choice(len(words), size=self.n_choices, replace=False)
        self._choices = [words[int(i)] for i in picked]  # uniformly drawn answer, shuffled
        self._answer = int(rng.integers(self.n_choices))
        answer = self._choices[self._answer]
        cue, question = _cue_and_question(category, answer, rng)
        if self.distractors:
            middle = [DISTRACTORS[int(i)] for i in rng.integers(len(DISTRACTORS), size=self.delay)]
        else:
            middle = [NO_DISTRACTOR] * self.delay
        query = f"Question: {question} Options: {', '.join(self._choices)}."
        self._sentences = [cue, *middle, query]
        self._step = 0
        return self._observe(cue), self._info()

    def step(self, action: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._step < 0:
            raise RuntimeError("TextRecallEnv.step() called before reset()")
        if self._step > self.delay + 1:
            raise RuntimeError("TextRecallEnv.step() called after the episode ended; reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"action must be an int in [0, {self.n_choices}), got {action!r}")
        graded = self._step == self.delay + 1
        self._step += 1
        if not graded:
            return self._observe(self._sentences[self._step]), 0.0, False, False, self._info()
        correct = int(action) == self._answer
        info = {**self._info(), "correct": correct, "answer": self._answer}
        obs = self._observe("Correct." if correct else "Incorrect.")
        return obs, 1.0 if correct else 0.0, True, False, info

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None

    def _observe(self, text: str) -> str:
        self._last_obs = text
        return text

    def _info(self) -> dict[str, Any]:
        if self._step == 0:
            phase = "cue"
        elif self._step <= self.delay:
            phase = "distractor"
        elif self._step == self.delay + 1:
            phase = "query"
        else:
            phase = "done"
        choices = list(self._choices) if phase == "query" else []
        return {"phase": phase, "step": self._step, "choices": choices}


def _cue_and_question(category: str, answer: str, rng: np.random.Generator) -> tuple[str, str]:
    """The cue sentence that states ``answer`` and the question that asks for it back."""
    if category == "colour":
        item = COLOURED_ITEMS[int(rng.integers(len(COLOURED_ITEMS)))]
        return f"Remember this: the {item} is {answer}.", f"what colour was the {item}?"
    if category == "object":
        box = CONTAINERS[int(rng.integers(len(CONTAINERS)))]
        return f"Remember this: the {box} holds a {answer}.", f"what did the {box} hold?"
    item = NUMBERED_ITEMS[int(rng.integers(len(NUMBERED_ITEMS)))]
    return f"Remember this: the {item} is {answer}.", f"what was the {item}?"


def _int_in_range(name: str, value: Any, low: int, high: int) -> int:
    if not (is_int(value) or isinstance(value, np.integer)):
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)
