"""The pass-key probe (Mohtashami & Jaggi, 2023): a number hidden in long filler text.

A model that retrieves the key continues the prompt with it. Used by the EpisodicLM tests, the
episodic benchmark and ``tempomem plot events``.
"""

from __future__ import annotations

import re

PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


def passkey_prompt(key: int, repeats: int, depth: float) -> str:
    """The pass key hidden at ``depth`` (0..1) of ``repeats`` filler sentences (~24 SmolLM2
    tokens each), then the question; a model that retrieves it continues with the key."""
    if not 0.0 <= depth <= 1.0 or repeats < 0:
        raise ValueError(f"need 0 <= depth <= 1 and repeats >= 0, got {depth}, {repeats}")
    before = int(repeats * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return (
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and "
        "memorize it.\n"
        + PASSKEY_FILLER * before
        + needle
        + PASSKEY_FILLER * (repeats - before)
        + "\nWhat is the pass key? The pass key is"
    )


def passkey_found(key: int, continuation: str) -> bool:
    """Whether the generated ``continuation`` states ``key`` as a whole number."""
    return re.search(rf"\b{key}\b", continuation) is not None


__all__ = ["PASSKEY_FILLER", "passkey_found", "passkey_prompt"]
