"""One frozen model with TempoFit memory, stepping any session given that session's memory.

The worker holds no session state. A step takes a session's memory state (the
``TempoFit.state_dict()`` of its last committed step, or None for an empty memory) and a
``StepRequest``, loads the state into the worker's one ``TempoFit``, runs the frozen model on
the step's tokens, and returns the answer plus the session's new state. The session actor owns
and stores the state; the worker only computes, so it may die, restart or be replicated freely
(a worker task is pure and safe to retry).

Three layers, each usable alone:

- ``StepEngine``: in-process model + TempoFit + the step function. A Ray Serve deployment
  (later) can reuse it; ``run_many`` is the seam where ``@serve.batch`` will stack several
  sessions' memories into one batched forward (today it loops: TempoFit keeps one ring per
  layer for all batch rows, so rows must have the same number of frames to share a forward).
- ``PolicyWorker``: the engine behind a bytes/dict interface fit for crossing processes:
  states travel as ``kv_store`` codec records (raw tensor buffers + JSON header, never pickle).
- ``worker_handle(spec)``: the named Ray actor (``get_if_exists``), one per model spec, that
  many session actors share, so the model is loaded once.

State size (measured): a full state is ``2 * layers * H * frames * S_slot * D`` K/V elements
plus token masks and frame times. Tests' tiny model (layers [1, 2], 2 KV heads, D 16, fp32), 8
frames of 16 tokens: 66 KB. SmolLM2-135M (default layers [6, 9, 11, 14], 3 KV heads, D 64,
fp32) at S = 256: 1.57 MB per frame, 12.6 MB at 8 frames, and pack + unpack of a full state
takes 1-20 ms on CPU. At that size sending only the new frame (the session actor keeping the
ring) is the next optimisation, cutting the per-step transfer 8x; full states keep this first
version simple and exactly restorable.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from kv_store import decode_record, encode_record
from memory import TempoFitConfig
from services.schemas import StepRequest

ModelFactory = Callable[[], Any]

#: Names ``WorkerSpec.model`` accepts besides a factory.
MODEL_NAMES = ("smollm2", "tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma")
_STATE_META = "state"


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


def pack_state(state: Mapping[str, Any]) -> bytes:
    """A ``TempoFit.state_dict()`` as one codec record (tensors as raw buffers, rest JSON)."""
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return encode_record(tensors, {_STATE_META: plain})


def unpack_state(data: bytes) -> dict[str, Any]:
    """Inverse of ``pack_state``; raises ``kv_store.CorruptRecord`` on foreign bytes."""
    tensors, meta = decode_record(data)
    plain = meta.get(_STATE_META)
    if not isinstance(plain, dict):
        raise ValueError("state record has no 'state' metadata: not written by pack_state")
    return {**plain, **tensors}


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

    def run(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[StepOutput, dict[str, Any]]:
        """One step of one session: ``(output, new_state)``.

        ``state`` None is an empty memory (a new episode, or a memoryless degraded step).
        Raises ValueError naming the field for token ids outside the model's vocabulary, and
        for a state that does not fit this worker's model or config.
        """
        self._check_vocab(request)
        start = time.perf_counter()
        tf = self.tempofit
        if state is None:
            tf.reset()
        else:
            tf.load_state_dict(state)
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
                scores = self._score_choices(last, out.past_key_values, request.choices)
        computed = time.perf_counter()
        new_state = tf.state_dict()
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
        self, items: Sequence[tuple[Mapping[str, Any] | None, StepRequest]]
    ) -> list[tuple[StepOutput, dict[str, Any]]]:
        """Several sessions' steps. The seam for batched serving: loops for now."""
        return [self.run(state, request) for state, request in items]

    def _score_choices(
        self, last_logits: torch.Tensor, cache: Any, choices: list[list[int]]
    ) -> list[float]:
        """Sum of log p(choice tokens | input_ids) per choice, from the step's KV cache (the
        prefix keys there are the memory-loaded ones, so the scores see the memory)."""
        first_logp = torch.log_softmax(last_logits, dim=-1)
        scores = []
        for choice in choices:
            score = float(first_logp[choice[0]])
            if len(choice) > 1:
                branch = copy.deepcopy(cache)
                ids = torch.tensor([choice[:-1]], dtype=torch.long)
                logits = self.model(ids, past_key_values=branch, use_cache=True).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)
                score += float(logp[torch.arange(len(choice) - 1), choice[1:]].sum())
            scores.append(score)
        return scores

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
        output, new_state = self.engine.run(None if state is None else unpack_state(state), req)
        return output.model_dump(mode="json"), pack_state(new_state)

    def step_many(
        self, items: Sequence[tuple[bytes | None, Mapping[str, Any]]]
    ) -> list[tuple[dict[str, Any], bytes]]:
        """Several sessions' steps in one call (the batching seam; see ``StepEngine``)."""
        return [self.step(state, request) for state, request in items]

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
