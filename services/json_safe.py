"""``json_safe``: a value that JSON can carry, for error details that echo bad input."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold made printable: non-finite floats become the
    strings ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``, other objects their ``str()``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
