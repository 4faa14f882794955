"""The word lists of `memory.temporal`, kept as TOML data beside this module.

`horizon_votes.toml` (keyword -> votes per volatility class) is read by `horizons`,
`result_fields.toml` (attribute -> asking and evidence words) by `coverage`. Editing a list
changes behaviour without touching code; the tests of those modules pin what it must keep.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any


def load_lexicon(name: str) -> dict[str, Any]:
    """The table of ``<name>.toml`` in this folder, keys in file order."""
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)
