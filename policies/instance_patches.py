"""Per-instance reversible patches: ``forward`` replaced on one module instance, never a class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


class InstanceForwardPatches:
    """``forward`` replacements set as instance attributes on modules of one model instance
    (never on a class), undone in reverse order of installation by ``restore()``."""

    def __init__(self) -> None:
        self._restore: list[tuple[nn.Module, Any]] = []

    def install(self, module: nn.Module, forward: Callable[..., Any]) -> None:
        previous = module.__dict__.get("forward")  # None: the class's forward was in use
        module.forward = forward
        self._restore.append((module, previous))

    @property
    def modules(self) -> list[nn.Module]:
        return [module for module, _ in self._restore]

    def __len__(self) -> int:
        return len(self._restore)

    def restore(self) -> None:
        for module, previous in reversed(self._restore):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._restore.clear()
