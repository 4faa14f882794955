"""Argument checks shared by the episodic modules (and by ``memory``'s other users)."""

from __future__ import annotations

from memory.numbers import is_int


def check_int(name: str, value: object, lowest: int) -> None:
    """ValueError unless ``value`` is an int (not a bool) >= ``lowest``."""
    if not is_int(value) or value < lowest:
        raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
