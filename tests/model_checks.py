"""Checks shared by the model tests (test_tempofit.py, test_gemma3.py, test_frozen_policies.py):
logits of a plain forward, hooks left on a model, two robot-camera frames, TempoFit's two-step
exactness and reversibility, and the frames of a text-recall episode."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from envs.tasks.text_recall import TextRecallEnv
from memory import TempoFitConfig
from policies import TempoFit

Model = Any  # a transformers causal LM (typed loosely: its attributes are dynamic)


def logits_of(model: Model, input_ids: Tensor, **kwargs: Any) -> Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits


def hook_count(model: Model) -> int:
    """Hooks and instance-attribute forwards left on ``model``'s modules."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + ("forward" in m.__dict__)
        for m in model.modules()
    )


def robot_frames(tokenizer: Any) -> list[tuple[Tensor, int]]:
    """(input_ids (1, T), prefix_len) per frame: an observation prefix and an action suffix."""
    observations = [
        "Robot camera: red block left of the blue bowl. Task: put the red block in the bowl.",
        "Robot camera: gripper above the red block, bowl to the right. Task: put the red block "
        "in the bowl.",
    ]
    frames = []
    for text in observations:
        prefix = tokenizer(text, return_tensors="pt").input_ids
        suffix = tokenizer(" Action: move", return_tensors="pt", add_special_tokens=False)
        frames.append((torch.cat([prefix, suffix.input_ids], dim=1), prefix.shape[1]))
    return frames


def two_steps_exact_when_empty_and_reversible(
    model: Model, config: TempoFitConfig, frames: list[tuple[Tensor, int]]
) -> tuple[TempoFit, Tensor, Tensor]:
    """Run the two ``(input_ids, prefix_len)`` frames as steps of ``TempoFit(model, config)``.

    Asserts that the first step (empty memory) is bit-exact and that ``remove()`` restores the
    model (no hooks left, the second frame's logits exactly as before). Returns the removed
    TempoFit (its memory holds both frames), the second step's logits and the plain model's,
    for the caller's checks of what the memory changed.
    """
    (first, first_prefix), (second, second_prefix) = frames
    first_reference, reference = logits_of(model, first), logits_of(model, second)
    tempofit = TempoFit(model, config)
    try:
        with tempofit.step(prefix_len=first_prefix):
            assert torch.equal(logits_of(model, first), first_reference)
        with tempofit.step(prefix_len=second_prefix):
            with_memory = logits_of(model, second)
    finally:
        tempofit.remove()
    assert hook_count(model) == 0
    assert torch.equal(logits_of(model, second), reference)
    return tempofit, with_memory, reference


def text_recall_frames(policy: Any, delay: int, seed: int = 3) -> tuple[list[Any], dict[str, Any]]:
    """``policy.frame`` of every observation of a mixed-category TextRecallEnv episode, from
    the reset to the query (always taking action 0), and the query's info."""
    env = TextRecallEnv(delay=delay, category="mixed")
    obs, info = env.reset(seed=seed)
    frames = [policy.frame(obs, info)]
    while info["phase"] != "query":
        obs, _, _, _, info = env.step(0)
        frames.append(policy.frame(obs, info))
    return frames, info
