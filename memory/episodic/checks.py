"""Argument checks shared by the episodic modules."""

from __future__ import annotations


def check_int(name: str, value: object, lowest: int) -> None:
    """ValueError unless ``value`` is an int (not a bool) >= ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
