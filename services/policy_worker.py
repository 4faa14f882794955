"""One frozen model with TempoFit memory, stepping any session given that session's memory.

The worker holds no session state. A step takes a session's memory state (the
``TempoFit.state_dict()`` of its last committed step, or None for an empty memory) and a
``StepRequest``, loads the state into the worker's one ``TempoFit``, runs the frozen model on
the step's tokens, and returns the answer plus the session's new state. The session actor owns
and stores the state; the worker only computes, so it may die, restart or be replicated freely
(a worker task is pure and safe to retry).

Three layers, each usable alone:

- ``StepEngine``: in-process model + TempoFit + the step function. A Ray Serve deployment
  reuses it; ``run_many`` stacks several sessions' memories along the batch dim into one
  forward (``services.deployment`` feeds it from ``@serve.batch``). TempoFit keeps one ring
  per layer for all batch rows, so rows share a forward only when their memories have the same
  shape (frames, ring position, slot length) and their steps the same token counts; the rest
  run alone.
- ``PolicyWorker``: the engine behind a bytes/dict interface fit for crossing processes:
  states travel as ``kv_store`` codec records (raw tensor buffers + JSON header, never pickle).
- ``worker_handle(spec)``: the named Ray actor (``get_if_exists``), one per model spec, that
  many session actors share, so the model is loaded once.

State size (measured): a full state is ``2 * layers * H * frames * S_slot * D`` K/V elements
plus token masks and frame times. Tests' tiny model (layers [1, 2], 2 KV heads, D 16, fp32), 8
frames of 16 tokens: 66 KB. SmolLM2-135M (default layers [6, 9, 11, 14], 3 KV heads, D 64,
fp32) at S = 256: 1.57 MB per frame, 12.6 MB at 8 frames, and pack + unpack of a full state
takes 1-20 ms on CPU. ``WorkerSpec(placement="session")`` avoids the transfer altogether (the
engine runs in the session actor, see ``services.policy_backends``); for the shared placement,
sending only the new frame (the session actor keeping the ring) would cut it 8x.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field

from kv_store.state import decode_state, encode_state
from memory import TempoFitConfig
from policies.choice_scoring import score_choices
from services.schemas import StepRequest

ModelFactory = Callable[[], Any]

#: Names ``WorkerSpec.model`` accepts besides a factory.
MODEL_NAMES = ("smollm2", "tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma")


class WorkerSpec(BaseModel):
    """Which frozen model a worker hosts and how its TempoFit memory is configured.

    Two specs that are equal name the same shared worker actor.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        default="tiny-llama",
        description=f"One of {MODEL_NAMES}; ignored when a factory is given to the worker.",
    )
    seed: int = Field(default=0, ge=0, description="Seed of the tiny random models.")
    tempofit: TempoFitConfig | None = Field(
        default=None,
        description="TempoFit config; None = policies.default_layers(num_layers), capacity 8.",
    )
    label: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_.\-]{0,64}$",
        description="Extra name part, e.g. to tell workers with different factories apart.",
    )
    placement: Literal["shared", "session"] = Field(
        default="shared",
        description=(
            "'shared': one PolicyWorker actor (or Serve deployment) steps every session, the "
            "state crossing processes each step. 'session': each session actor loads its own "
            "engine and steps in-process (one hop, no state transfer; one model copy per "
            "session, so for small policies or one robot per node)."
        ),
    )

    @property
    def actor_name(self) -> str:
        """Ray actor name: readable model name plus a digest of the whole spec."""
        digest = hashlib.blake2b(self.model_dump_json().encode(), digest_size=6).hexdigest()
        label = f"-{self.label}" if self.label else ""
        return f"tempomem/worker/{self.model}{label}-{digest}"


def load_model(spec: WorkerSpec) -> Any:
    """The frozen model a spec names (CPU, eval mode, no grads)."""
    from policies import load_smollm2, tiny_random_model

    if spec.model == "smollm2":
        model, _tokenizer = load_smollm2()
        return model
    if spec.model.startswith("tiny-") and spec.model in MODEL_NAMES:
        return tiny_random_model(spec.model.removeprefix("tiny-"), seed=spec.seed)
    raise ValueError(f"WorkerSpec.model must be one of {MODEL_NAMES}, got {spec.model!r}")


class StepOutput(BaseModel):
    """What the worker computed for one step (the session actor adds ids and flags)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frames_in_memory: int = Field(ge=0, description="Frames in memory when the step ran.")
    frames_after: int = Field(ge=0, description="Frames in the new state (after the push).")
    top_k_ids: list[int]
    top_k_logits: list[float]
    choice_scores: list[float] | None = None
    model_ms: float
    state_ms: float


@runtime_checkable
class StepRunner(Protocol):
    """What steps a session in-process: ``StepEngine``, or a stand-in (benchmarks, tests)."""

    def run(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[StepOutput, dict[str, Any]]: ...


class StepEngine:
    """A frozen model and one ``TempoFit`` on it, stepping one session at a time.

    Args:
        model: a frozen causal LM supported by ``policies.TempoFit``.
        config: the TempoFit config (None: ``policies.default_layers``, capacity 8).
    """

    def __init__(self, model: Any, config: TempoFitConfig | None = None) -> None:
        from policies import TempoFit, default_layers

        if config is None:
            config = TempoFitConfig(layers=default_layers(int(model.config.num_hidden_layers)))
        self.model = model
        self.config = config
        self.vocab_size = int(model.config.vocab_size)
        self.tempofit = TempoFit(model, config)
        # The state this engine's memory holds right now (the last ``run`` result): a caller
        # that passes it back (a session stepping in-process) skips reloading it.
        self._live_state: Mapping[str, Any] | None = None

    def run(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[StepOutput, dict[str, Any]]:
        """One step of one session: ``(output, new_state)``.

        ``state`` None is an empty memory (a new episode, or a memoryless degraded step).
        Raises ValueError naming the field for token ids outside the model's vocabulary, and
        for a state that does not fit this worker's model or config.
        """
        self._check_vocab(request)
        return self._run_checked(state, request)

    def _run_checked(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[StepOutput, dict[str, Any]]:
        """``run`` for a request whose token ids were already checked."""
        start = time.perf_counter()
        tf = self.tempofit
        if tf.memory.batch_size != 1:
            self._use_batch(1)
        if state is None:
            tf.reset()
        elif state is not self._live_state:
            tf.load_state_dict(state)
        self._live_state = None  # until this step has finished
        frames = tf.memory.num_frames(self.config.layers[0])
        loaded = time.perf_counter()
        ids = torch.tensor([request.input_ids], dtype=torch.long)
        with torch.no_grad():
            with tf.step(prefix_len=request.prefix_len, t=request.t):
                out = self.model(ids, use_cache=request.choices is not None)
            last = out.logits[0, -1].float()
            top_ids: list[int] = []
            top_logits: list[float] = []
            if request.top_k:
                values, indices = torch.topk(last, min(request.top_k, last.numel()))
                top_ids, top_logits = indices.tolist(), values.tolist()
            scores = None
            if request.choices is not None:
                scores = score_choices(self.model, last, out.cache, request.choices)
        computed = time.perf_counter()
        new_state = self._live_state = tf.state_dict()
        done = time.perf_counter()
        output = StepOutput(
            frames_in_memory=frames,
            frames_after=tf.memory.num_frames(self.config.layers[0]),
            top_k_ids=top_ids,
            top_k_logits=top_logits,
            choice_scores=scores,
            model_ms=(computed - loaded) * 1e3,
            state_ms=((loaded - start) + (done - computed)) * 1e3,
        )
        return output, new_state

    def run_many(
        self,
        items: Sequence[tuple[Mapping[str, Any] | None, StepRequest]],
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
        for i, (state, request) in enumerate(items):
            try:
                self._check_vocab(request)
                key = self.batch_key(state, request)
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
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[Any, ...] | None:
        """What must be equal for two steps to share a forward; None: this step runs alone."""
        if request.choices is not None:
            return None
        if request.t is None and self.config.gap_unit == "seconds":
            return None  # the clock's now; keep the single-step semantics exact
        shape: list[Any] = []
        for layer in self.config.layers:
            if state is None:
                shape.append((0, 0, 0))
                continue
            frames = state.get(f"layer.{layer}.num_frames")
            slot = state.get(f"layer.{layer}.next_slot")
            keys = state.get(f"layer.{layer}.keys")
            slot_len = int(keys.shape[3]) if isinstance(keys, torch.Tensor) else 0
            if state.get("batch_size") != 1:
                return None
            shape.append((frames, slot, slot_len))
        return (len(request.input_ids), request.prefix_len, tuple(shape))

    def _use_batch(self, batch_size: int) -> None:
        """Give the TempoFit an (empty) memory of ``batch_size`` sessions if it has another."""
        self._live_state = None
        self.tempofit.reset()
        self.tempofit.set_batch_size(batch_size)

    def _run_batch(
        self, items: Sequence[tuple[Mapping[str, Any] | None, StepRequest]]
    ) -> list[tuple[StepOutput, dict[str, Any]]]:
        """One forward for steps of equal ``batch_key`` (see ``run_many``)."""
        start = time.perf_counter()
        size = len(items)
        tf = self.tempofit
        steps = [0 if s is None else int(s["tempofit.steps_pushed"]) for s, _ in items]
        times = torch.tensor(
            [float(steps[b]) if r.t is None else r.t for b, (_, r) in enumerate(items)],
            dtype=torch.float64,
        )
        self._use_batch(size)
        first = items[0][0]
        if first is not None:
            stacked: dict[str, Any] = {}
            for key, value in first.items():
                if isinstance(value, torch.Tensor) and key.startswith("layer."):
                    parts = [state[key] for state, _ in items]  # type: ignore[index]
                    stacked[key] = torch.cat(parts, dim=0)
                else:
                    stacked[key] = value
            stacked["batch_size"] = size
            stacked["tempofit.steps_pushed"] = max(steps)
            tf.load_state_dict(stacked)
        frames = tf.memory.num_frames(self.config.layers[0])
        loaded = time.perf_counter()
        prefix_len = items[0][1].prefix_len
        ids = torch.tensor([r.input_ids for _, r in items], dtype=torch.long)
        try:
            with torch.no_grad():
                with tf.step(prefix_len=prefix_len, t=times):
                    out = self.model(ids, use_cache=False)
                last = out.logits[:, -1].float()
            computed = time.perf_counter()
            batched = tf.state_dict()
        finally:
            self._use_batch(1)
        outputs: list[tuple[StepOutput, dict[str, Any]]] = []
        frames_after = int(batched.get(f"layer.{self.config.layers[0]}.num_frames", 0))
        for b, (_, request) in enumerate(items):
            top_ids: list[int] = []
            top_logits: list[float] = []
            if request.top_k:
                values, indices = torch.topk(last[b], min(request.top_k, last.shape[-1]))
                top_ids, top_logits = indices.tolist(), values.tolist()
            row: dict[str, Any] = {}
            for key, value in batched.items():
                if isinstance(value, torch.Tensor) and key.startswith("layer."):
                    row[key] = value[b : b + 1].clone()
                else:
                    row[key] = value
            row["batch_size"] = 1
            row["tempofit.steps_pushed"] = steps[b] + 1
            outputs.append(
                (
                    StepOutput(
                        frames_in_memory=frames,
                        frames_after=frames_after,
                        top_k_ids=top_ids,
                        top_k_logits=top_logits,
                        choice_scores=None,
                        model_ms=(computed - loaded) * 1e3 / size,
                        state_ms=((loaded - start) + (time.perf_counter() - computed)) * 1e3 / size,
                    ),
                    row,
                )
            )
        return outputs

    def _check_vocab(self, request: StepRequest) -> None:
        if max(request.input_ids) >= self.vocab_size:
            i = max(range(len(request.input_ids)), key=request.input_ids.__getitem__)
            raise ValueError(
                f"input_ids[{i}] = {request.input_ids[i]} is outside the model's vocabulary "
                f"(vocab_size {self.vocab_size})"
            )
        for c, choice in enumerate(request.choices or []):
            if max(choice) >= self.vocab_size:
                raise ValueError(
                    f"choices[{c}] holds token id {max(choice)} outside the model's vocabulary "
                    f"(vocab_size {self.vocab_size})"
                )


class PolicyWorker:
    """``StepEngine`` behind a process-boundary interface (dicts and codec bytes).

    Used as a Ray actor class through ``worker_handle``; a Serve deployment can wrap the same
    class. The model is built once, in ``__init__``: from ``factory()`` when given, else from
    ``spec.model``.
    """

    def __init__(self, spec: WorkerSpec | Mapping[str, Any], factory: ModelFactory | None = None):
        self.spec = spec if isinstance(spec, WorkerSpec) else WorkerSpec.model_validate(spec)
        model = factory() if factory is not None else load_model(self.spec)
        self.engine = StepEngine(model, self.spec.tempofit)

    def step(self, state: bytes | None, request: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """``(StepOutput as a JSON dict, packed new state)`` for one session step."""
        req = StepRequest.model_validate(request)
        output, new_state = self.engine.run(None if state is None else decode_state(state), req)
        return output.model_dump(mode="json"), encode_state(new_state)

    def step_many(
        self, items: Sequence[tuple[bytes | None, Mapping[str, Any]]]
    ) -> list[tuple[dict[str, Any], bytes] | Exception]:
        """Several sessions' steps in one call, batched where shapes allow (see
        ``StepEngine.run_many``); a failing item yields its exception in its place."""
        parsed: list[tuple[dict[str, Any] | None, StepRequest] | Exception] = []
        for state, request in items:
            try:
                parsed.append(
                    (
                        None if state is None else decode_state(state),
                        StepRequest.model_validate(request),
                    )
                )
            except ValueError as err:
                parsed.append(err)
        ok = [p for p in parsed if not isinstance(p, Exception)]
        ran = iter(self.engine.run_many(ok, return_exceptions=True))
        results: list[tuple[dict[str, Any], bytes] | Exception] = []
        for p in parsed:
            if isinstance(p, Exception):
                results.append(p)
                continue
            result = next(ran)
            if isinstance(result, Exception):
                results.append(result)
            else:
                output, new_state = result
                results.append((output.model_dump(mode="json"), encode_state(new_state)))
        return results

    def info(self) -> dict[str, Any]:
        """Model and memory config of this worker."""
        return {
            "spec": self.spec.model_dump(mode="json"),
            "tempofit": self.engine.config.model_dump(mode="json"),
            "vocab_size": self.engine.vocab_size,
        }


def worker_handle(
    spec: WorkerSpec,
    *,
    ray_namespace: str,
    factory: ModelFactory | None = None,
    num_cpus: float = 0,
) -> Any:
    """The shared named ``PolicyWorker`` actor for ``spec`` (created on first use).

    Restartable without limit (it holds no session state); a step is pure, so a task that was
    running when the worker died is retried. Detached: whichever session actor happens to
    create it first, it must not die with that actor (Ray kills a non-detached actor whose
    owner dies); it lives until killed or until the Ray cluster stops.
    """
    import ray

    actor_cls = ray.remote(PolicyWorker)
    return actor_cls.options(
        name=spec.actor_name,
        namespace=ray_namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=2,
        max_concurrency=1,
        num_cpus=num_cpus,
    ).remote(spec.model_dump(mode="json"), factory)
