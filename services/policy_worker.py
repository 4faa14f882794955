"""One frozen model with TempoFit memory, stepping any session given that session's memory.

The worker holds no session state. A step takes a session's memory state (the
``TempoFit.state_dict()`` of its last committed step, or None for an empty memory) and a
``StepRequest``, loads the state into the worker's one ``TempoFit``, runs the frozen model on
the step's tokens, and returns the answer plus the session's new state. The session actor owns
and stores the state; the worker only computes, so it may die, restart or be replicated freely
(a worker task is pure and safe to retry).

Three layers, each usable alone:

- ``StepEngine``: the in-process step engine (``policies.tempofit_engine.TempoFitEngine``:
  model + TempoFit + the step function, the same engine the env runners use) speaking
  ``StepRequest`` / ``StepOutput``. A Ray Serve deployment reuses it; ``run_many`` stacks
  several sessions' memories along the batch dim into one forward (``services.deployment``
  feeds it from ``@serve.batch``). TempoFit keeps one ring per layer for all batch rows, so
  rows share a forward only when their memories have the same shape (frames, ring position,
  slot length) and their steps the same token counts; the rest run alone.
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

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from kv_store.state import decode_state, encode_state
from memory import TempoFitConfig
from services.schemas import StepRequest

if TYPE_CHECKING:
    from policies.tempofit_engine import StepResult

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
    """``policies.tempofit_engine.TempoFitEngine`` speaking ``StepRequest`` / ``StepOutput``.

    Stateless per call: ``run(state, request)`` and ``run_many`` (see the engine) take each
    session's memory state and return the new one.

    Args:
        model: a frozen causal LM supported by ``policies.TempoFit``.
        config: the TempoFit config (None: ``policies.default_layers``, capacity 8).
    """

    def __init__(self, model: Any, config: TempoFitConfig | None = None) -> None:
        from policies.tempofit_engine import TempoFitEngine

        self.engine = TempoFitEngine(model, config)
        self.model = model
        self.config = self.engine.config
        self.vocab_size = self.engine.vocab_size
        self.tempofit = self.engine.tempofit

    def run(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[StepOutput, dict[str, Any]]:
        """One step of one session: ``(output, new_state)`` (``TempoFitEngine.run``)."""
        result, new_state = self.engine.run(state, request)
        return _output(result), new_state

    def run_many(
        self,
        items: Sequence[tuple[Mapping[str, Any] | None, StepRequest]],
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Several sessions' steps, batched into one forward where shapes allow
        (``TempoFitEngine.run_many``): ``(output, new_state)`` or an exception per item."""
        results = self.engine.run_many(items, return_exceptions=return_exceptions)
        return [r if isinstance(r, Exception) else (_output(r[0]), r[1]) for r in results]

    def batch_key(
        self, state: Mapping[str, Any] | None, request: StepRequest
    ) -> tuple[Any, ...] | None:
        """What must be equal for two steps to share a forward; None: this step runs alone."""
        return self.engine.batch_key(state, request)


def _output(result: StepResult) -> StepOutput:
    """A ``policies.tempofit_engine.StepResult`` as the service's ``StepOutput``."""
    return StepOutput(**dataclasses.asdict(result))


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
