"""``memory.numbers``: a bool is never a number in tempomem's argument checks."""

from __future__ import annotations

import math

import numpy as np

from memory.numbers import is_int, is_real


def test_ints_and_reals_but_never_bools() -> None:
    assert is_int(3) and is_int(-1) and is_int(2**80)
    assert not any(is_int(v) for v in (True, False, 3.0, "3", None, np.bool_(True)))
    assert is_real(3) and is_real(2.5) and is_real(np.float64(1.5)) and is_real(math.inf)
    assert not any(is_real(v) for v in (True, False, "2.5", None, 1j, [1.0]))
