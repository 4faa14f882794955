"""The TempoFit step engine: one frozen model, one ``TempoFit``, a step that scores choices.

One step runs the model on a step's tokens (the first ``prefix_len`` are the frame's prefix)
inside ``TempoFit.step``, then reads the last token's logits: the ``top_k`` largest and, when
``choices`` are given, each choice's ``sum log p(choice | tokens)`` (``score_choices``). Two
ways to drive it:

- stateful, the engine's memory carrying the episode: ``engine.step(inputs)``, ``reset()``
  (the env runner, ``envs.memory_runners.TempoFitRunner``);
- stateless, the caller holding each session's memory: ``engine.run(state, inputs) ->
  (result, new_state)`` loads ``state`` (a ``TempoFit.state_dict()``, None for an empty memory)
  first; ``run_many`` batches several sessions into one forward where their memories have the
  same shape (the service worker, ``services.policy_worker.StepEngine``).

Both go through the same ``_step``, so a session stepped by either gives the same answers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from memory import TempoFitConfig
from policies.choice_scoring import score_choices
from policies.layer_selection import default_layers
from policies.tempofit import TempoFit
from policies.tempofit_state import (
    MemoryShape,
    memory_shape,
    split_state,
    stack_states,
    steps_pushed,
)


class StepInputs(Protocol):
    """What one step needs (``services.schemas.StepRequest`` has these fields)."""

    @property
    def input_ids(self) -> Sequence[int]: ...
    @property
    def prefix_len(self) -> int: ...
    @property
    def t(self) -> float | None: ...
    @property
    def choices(self) -> Sequence[Sequence[int]] | None: ...
    @property
    def top_k(self) -> int: ...


@dataclass(frozen=True)
class StepInput:
    """One step's inputs; ``t`` None: the step counter (or the clock, ``gap_unit="seconds"``)."""

    input_ids: Sequence[int]
    prefix_len: int
    t: float | None = None
    choices: Sequence[Sequence[int]] | None = None
    top_k: int = 0


@dataclass(frozen=True)
class StepResult:
    """What one step computed (the fields of ``services.policy_worker.StepOutput``)."""

    frames_in_memory: int  # frames in memory when the step ran
    frames_after: int  # frames after the step's push
    top_k_ids: list[int]
    top_k_logits: list[float]
    choice_scores: list[float] | None
    model_ms: float
    state_ms: float


@dataclass(frozen=True)
class ForwardScores:
    """The last token's ``top_k`` logits and the choices' scores of one forward."""

    top_k_ids: list[int]
    top_k_logits: list[float]
    choice_scores: list[float] | None


@torch.no_grad()
def forward_and_score(
    model: Any,
    input_ids: Sequence[int],
    choices: Sequence[Sequence[int]] | None,
    top_k: int = 0,
) -> ForwardScores:
    """One forward of ``model`` on ``input_ids`` (batch 1): the top ``top_k`` next-token logits
    and, when ``choices`` is not None, ``score_choices`` of them (the forward then keeps its
    KV cache for multi-token choices)."""
    out = model(torch.tensor([list(input_ids)], dtype=torch.long), use_cache=choices is not None)
    last = out.logits[0, -1].float()
    top_ids, top_logits = _top_k(last, top_k)
    scores = None if choices is None else score_choices(model, last, out.cache, choices)
    return ForwardScores(top_k_ids=top_ids, top_k_logits=top_logits, choice_scores=scores)


def _top_k(logits: Tensor, k: int) -> tuple[list[int], list[float]]:
    """The ``k`` largest of (V,) ``logits``: (ids, values); empty for k = 0."""
    if not k:
        return [], []
    values, indices = torch.topk(logits, min(k, logits.shape[-1]))
    return indices.tolist(), values.tolist()


def default_config(model: Any, **fields: Any) -> TempoFitConfig:
    """A config on ``policies.default_layers`` of ``model`` (capacity etc. from ``fields``)."""
    layers = default_layers(int(model.config.num_hidden_layers))
    return TempoFitConfig(layers=layers, **fields)


class TempoFitEngine:
    """A frozen model and one ``TempoFit`` on it (see the module docstring).

    Args:
        model: a frozen causal LM supported by ``policies.TempoFit``.
        config: the TempoFit config (None: ``default_config(model)``, capacity 8).
    """

    def __init__(self, model: Any, config: TempoFitConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else default_config(model)
        self.vocab_size = int(model.config.vocab_size)
        self.tempofit = TempoFit(model, self.config)
        # The state this engine's memory holds right now (the last ``run`` result): a caller
        # that passes it back (a session stepping in-process) skips reloading it.
        self._live_state: Mapping[str, Any] | None = None

    # ----------------------------------------------------------------------- stateful

    def step(self, inputs: StepInputs) -> StepResult:
        """One step on the memory the engine holds (which then holds this step's frame)."""
        self._live_state = None
        if self.tempofit.memory.batch_size != 1:
            self._use_batch(1)
        return self._step(inputs, time.perf_counter())

    def reset(self) -> None:
        """Forget every frame (a new episode)."""
        self._live_state = None
        self.tempofit.reset()

    def remove(self) -> None:
        """Take TempoFit off the model (the engine is unusable afterwards)."""
        self.tempofit.remove()

    # ----------------------------------------------------------------------- stateless

    def run(
        self, state: Mapping[str, Any] | None, inputs: StepInputs
    ) -> tuple[StepResult, dict[str, Any]]:
        """One step of one session: ``(result, new_state)``.

        ``state`` None is an empty memory (a new episode, or a memoryless degraded step).
        Raises ValueError naming the field for token ids outside the model's vocabulary, and
        for a state that does not fit this engine's model or config.
        """
        self.check_vocab(inputs)
        return self._run_checked(state, inputs)

    def run_many(
        self,
        items: Sequence[tuple[Mapping[str, Any] | None, StepInputs]],
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Several sessions' steps, batched into one forward where shapes allow.

        Items are grouped by ``batch_key``: the same ``len(input_ids)`` and ``prefix_len``, no
        ``choices``, and memories of the same shape (per layer: frames, ring position, slot
        length). A group of two or more runs as ONE forward with the sessions' memories stacked
        along the batch dim (``LayerwiseKVMemory(batch_size=B)``) and a ``(B,)`` frame time
        (each session's own ``t``, or its own step counter); the new state is split back per
        session. Everything else runs alone through ``run``. Results come in input order and
        equal those of ``run`` up to float rounding of the batched matmuls.

        ``return_exceptions``: a failing item (bad token ids, a state that does not fit) yields
        its exception in its place instead of failing the whole call.
        """
        results: list[Any] = [None] * len(items)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (state, inputs) in enumerate(items):
            try:
                self.check_vocab(inputs)
                key = self.batch_key(state, inputs)
            except ValueError as err:
                if not return_exceptions:
                    raise
                results[i] = err
                continue
            groups.setdefault(("alone", i) if key is None else key, []).append(i)
        for indices in groups.values():
            try:
                if len(indices) == 1:
                    i = indices[0]
                    results[i] = self._run_checked(items[i][0], items[i][1])
                else:
                    batch = self._run_batch([items[i] for i in indices])
                    for i, result in zip(indices, batch, strict=True):
                        results[i] = result
            except ValueError as err:
                if not return_exceptions or len(indices) == 1:
                    if not return_exceptions:
                        raise
                    results[indices[0]] = err
                    continue
                for i in indices:  # a batch failed: find the culprit alone
                    try:
                        results[i] = self._run_checked(items[i][0], items[i][1])
                    except ValueError as single_err:
                        results[i] = single_err
        return results

    def batch_key(
        self, state: Mapping[str, Any] | None, inputs: StepInputs
    ) -> tuple[int, int, MemoryShape] | None:
        """What must be equal for two steps to share a forward; None: this step runs alone."""
        if inputs.choices is not None:
            return None
        if inputs.t is None and self.config.gap_unit == "seconds":
            return None  # the clock's now; keep the single-step semantics exact
        shape = memory_shape(state, self.config.layers)
        if shape is None:
            return None
        return (len(inputs.input_ids), inputs.prefix_len, shape)

    def check_vocab(self, inputs: StepInputs) -> None:
        """ValueError naming the field for a token id outside the model's vocabulary."""
        ids = inputs.input_ids
        if max(ids) >= self.vocab_size:
            i = max(range(len(ids)), key=ids.__getitem__)
            raise ValueError(
                f"input_ids[{i}] = {ids[i]} is outside the model's vocabulary "
                f"(vocab_size {self.vocab_size})"
            )
        for c, choice in enumerate(inputs.choices or []):
            if max(choice) >= self.vocab_size:
                raise ValueError(
                    f"choices[{c}] holds token id {max(choice)} outside the model's vocabulary "
                    f"(vocab_size {self.vocab_size})"
                )

    # ----------------------------------------------------------------------- internals

    def _run_checked(
        self, state: Mapping[str, Any] | None, inputs: StepInputs
    ) -> tuple[StepResult, dict[str, Any]]:
        """``run`` for inputs whose token ids were already checked."""
        start = time.perf_counter()
        tf = self.tempofit
        if tf.memory.batch_size != 1:
            self._use_batch(1)
        if state is None:
            tf.reset()
        elif state is not self._live_state:
            tf.load_state_dict(state)
        self._live_state = None  # until this step has finished
        result = self._step(inputs, start)
        saving = time.perf_counter()
        new_state = self._live_state = tf.state_dict()
        saved_ms = (time.perf_counter() - saving) * 1e3
        return dataclasses.replace(result, state_ms=result.state_ms + saved_ms), new_state

    def _step(self, inputs: StepInputs, start: float) -> StepResult:
        """Run one step on the loaded memory; ``start``: when loading it began."""
        tf = self.tempofit
        frames = tf.memory.num_frames(self.config.layers[0])
        loaded = time.perf_counter()
        with torch.no_grad(), tf.step(prefix_len=inputs.prefix_len, t=inputs.t):
            scores = forward_and_score(self.model, inputs.input_ids, inputs.choices, inputs.top_k)
        computed = time.perf_counter()
        return StepResult(
            frames_in_memory=frames,
            frames_after=tf.memory.num_frames(self.config.layers[0]),
            top_k_ids=scores.top_k_ids,
            top_k_logits=scores.top_k_logits,
            choice_scores=scores.choice_scores,
            model_ms=(computed - loaded) * 1e3,
            state_ms=(loaded - start) * 1e3,
        )

    def _use_batch(self, batch_size: int) -> None:
        """Give the TempoFit an (empty) memory of ``batch_size`` sessions if it has another."""
        self._live_state = None
        self.tempofit.reset()
        self.tempofit.set_batch_size(batch_size)

    def _run_batch(
        self, items: Sequence[tuple[Mapping[str, Any] | None, StepInputs]]
    ) -> list[tuple[StepResult, dict[str, Any]]]:
        """One forward for steps of equal ``batch_key`` (see ``run_many``)."""
        start = time.perf_counter()
        size = len(items)
        tf = self.tempofit
        steps = [steps_pushed(state) for state, _ in items]
        times = torch.tensor(
            [float(steps[b]) if r.t is None else r.t for b, (_, r) in enumerate(items)],
            dtype=torch.float64,
        )
        stacked = stack_states([state for state, _ in items])
        self._use_batch(size)
        try:
            if stacked is not None:
                tf.load_state_dict(stacked)
            frames = tf.memory.num_frames(self.config.layers[0])
            loaded = time.perf_counter()
            ids = torch.tensor([list(r.input_ids) for _, r in items], dtype=torch.long)
            with torch.no_grad():
                with tf.step(prefix_len=items[0][1].prefix_len, t=times):
                    out = self.model(ids, use_cache=False)
                last = out.logits[:, -1].float()
            computed = time.perf_counter()
            frames_after = tf.memory.num_frames(self.config.layers[0])
            rows = split_state(tf.state_dict(), [count + 1 for count in steps])
        finally:
            self._use_batch(1)
        state_ms = ((loaded - start) + (time.perf_counter() - computed)) * 1e3 / size
        outputs: list[tuple[StepResult, dict[str, Any]]] = []
        for b, ((_, inputs), row) in enumerate(zip(items, rows, strict=True)):
            top_ids, top_logits = _top_k(last[b], inputs.top_k)
            result = StepResult(
                frames_in_memory=frames,
                frames_after=frames_after,
                top_k_ids=top_ids,
                top_k_logits=top_logits,
                choice_scores=None,
                model_ms=(computed - loaded) * 1e3 / size,
                state_ms=state_ms,
            )
            outputs.append((result, row))
        return outputs
