"""What counts as a number in tempomem's argument checks, in one place.

``True`` is an ``int`` to Python but never a count, a time or a weight to us, so a bool is
never accepted where a number is asked for.
"""

from __future__ import annotations

from typing import TypeGuard


def is_int(value: object) -> TypeGuard[int]:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> TypeGuard[int | float]:
    """True for an int or a float that is not a bool (NaN and infinities included: callers
    check finiteness where it matters)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
