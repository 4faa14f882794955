"""The contract between a task, a frozen policy and a memory runner.

A frozen policy is a frozen causal LM plus a way to turn one observation into tokens:

- ``frame(obs, info)`` returns a ``Frame``: the observation's *prefix* tokens (what TempoFit
  remembers, what frame stacking concatenates, what episodic memory streams), the *suffix*
  tokens that ask for the action (e.g. "Answer:"), and the candidate actions as token
  sequences (``choices[i]`` is action ``i``), or None when this step needs no decision (the
  runner then takes ``default_action``).
- The action is the choice whose tokens score highest (sum of log-probabilities given prefix +
  suffix, see ``policies.choice_scoring``).

Memory runners (``envs.memory_runners``) drive such a policy through an env with no memory,
TempoFit, episodic memory or frame stacking; the evaluation harness (``envs.evaluation``)
runs them over episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Frame:
    """One observation as tokens: ``prefix_ids + suffix_ids`` is the model input."""

    prefix_ids: list[int]
    suffix_ids: list[int]
    choices: list[list[int]] | None = None
    default_action: int = 0
    labels: list[str] = field(default_factory=list)  # readable names of the choices

    def __post_init__(self) -> None:
        if not self.prefix_ids:
            raise ValueError("Frame.prefix_ids must not be empty")
        if self.choices is not None and (not self.choices or any(not c for c in self.choices)):
            raise ValueError("Frame.choices must be None or non-empty token lists")


@runtime_checkable
class FrozenPolicy(Protocol):
    """A frozen causal LM (``model``, eval mode, no grads) and its observation encoder."""

    name: str
    model: Any

    def frame(self, obs: Any, info: dict[str, Any]) -> Frame: ...


def frozen_model(model: Any, vocab_needed: int) -> Any:
    """``model`` in eval mode with every gradient off, after checking that its vocabulary
    holds the ``vocab_needed`` token ids a policy's encoder produces."""
    vocab = int(getattr(model.config, "vocab_size", 0))
    if vocab < vocab_needed:
        raise ValueError(f"model vocab_size must be >= {vocab_needed} (TOKENS), got {vocab}")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
