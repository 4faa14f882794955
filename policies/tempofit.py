"""TempoFit on a frozen transformers model: layer-wise temporal KV memory, no retraining.

Per control step::

    tf = TempoFit(model, TempoFitConfig(layers=[6, 9, 11, 14]))
    with tf.step(prefix_len=S):           # t defaults to the step counter (or the clock)
        out = model(input_ids)            # tokens [0, S) are the frame's prefix

Inside a step, the first decoder forward that starts at position 0 (no tokens in its KV cache)
is the *prefix forward*. At the configured layers only, its first S tokens' pre-RoPE keys query
the memory (K-to-K; or the group-mean pre-RoPE queries for Q-to-K), the retrieved context is
residually loaded and norm-rescaled by ``memory.load`` before RoPE, and the layer's own attention
runs unchanged. Every later forward in the step (cached decoding, generate()) and every forward
outside a step passes through untouched. When the step exits normally, the frame's raw pre-RoPE
prefix K/V (before loading, only the first S tokens) is pushed at each layer; a step that raises,
or whose prefix forward raised, pushes nothing.

The prefix forward is detected by a forward pre-hook (with kwargs) on the decoder module that
owns the layers (``LlamaModel`` etc.; hooking the decoder rather than the causal-LM head also
catches direct ``model.model(...)`` calls): its start position is ``cache_position[0]`` when
given, else ``cache.get_seq_length()``, else 0.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memory import Clock, LayerwiseKVMemory, SystemClock, TempoFitConfig
from memory.numbers import is_int, is_real
from policies.attention_adapters import AttentionAdapter, adapter_for
from policies.concat_history import ConcatHistoryWrap
from policies.forward_watch import DecoderForwardWatch, ForwardInfo
from policies.prefix_kv_tap import PrefixKVTap
from policies.tempofit_state import STEPS_PUSHED_KEY, TEMPOFIT_KEY_PREFIX


@dataclass(frozen=True)
class LoadEvent:
    """One residual loading at a selected layer, as told to ``TempoFit.load_observers``.

    query is what retrieved (k_t for K-to-K, the group-mean queries for Q-to-K); query, k_t,
    v_t, k_hat, v_hat are (B, H, S, D); time is the step's t (float or (B,) float64).
    """

    layer: int
    time: float | Tensor
    query: Tensor
    k_t: Tensor
    v_t: Tensor
    k_hat: Tensor
    v_hat: Tensor


LoadObserver = Callable[[LoadEvent], None]


class PrefixForward(enum.Enum):
    """Where a step's prefix forward is, in lifecycle order."""

    PENDING = "pending"  # not started: the next forward at position 0 is the prefix forward
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # its frame is pushed when the step exits normally
    FAILED = "failed"  # it raised: nothing is pushed, even if the caller caught the error

    @property
    def finished(self) -> bool:
        return self in (PrefixForward.SUCCEEDED, PrefixForward.FAILED)


@dataclass
class _StepState:
    """One ``step()``: its prefix length, time and what the prefix forward captured."""

    prefix_len: int
    time: float | Tensor  # float, or (B,) float64
    prefix_forward: PrefixForward = PrefixForward.PENDING
    frames: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # layer -> raw K, V


class TempoFit:
    """Layer-wise temporal KV memory on a frozen decoder-only transformers model.

    Args:
        model: a LLaMA-family (incl. SmolLM2), Qwen2/Qwen3 or Gemma/Gemma2/Gemma3 causal LM or
            decoder (``policies.attention_adapters.supported_model_types()``); it is hooked,
            not modified.
        config: which layers, capacity, FGTB strength, gap unit, retrieval and loading modes.
        clock: source of t for ``gap_unit="seconds"`` when a step gives none
            (default ``memory.SystemClock()``).
        batch_size: B, independent sessions per forward (batch row b is session b). If the
            first prefix forward has another batch size while the memory is still empty, the
            memory is rebuilt for it.

    Attributes:
        memory: the ``memory.LayerwiseKVMemory`` (num_kv_heads, head_dim, dtype from the model).
        load_observers: callables told about every loading (see ``LoadObserver``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TempoFitConfig,
        clock: Clock | None = None,
        batch_size: int = 1,
    ) -> None:
        if not isinstance(config, TempoFitConfig):
            raise ValueError(f"config must be a memory.TempoFitConfig, got {type(config).__name__}")
        self.adapter: AttentionAdapter = adapter_for(model)
        self.geometry = self.adapter.geometry(model)
        out_of_range = [layer for layer in config.layers if layer >= self.geometry.num_layers]
        if out_of_range:
            raise ValueError(
                f"config.layers {out_of_range} out of range: the model has "
                f"{self.geometry.num_layers} layers (0..{self.geometry.num_layers - 1})"
            )
        if self.geometry.num_heads % self.geometry.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.geometry.num_heads} is not a multiple of "
                f"num_key_value_heads {self.geometry.num_kv_heads}"
            )
        self.model = model
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        key_module = self.adapter.sources(self.adapter.self_attention(model, config.layers[0]))
        reference_weight = next(iter(key_module["key"][0].parameters()), None)
        if reference_weight is None:
            reference_weight = next(model.parameters())
        self._dtype = reference_weight.dtype
        self._device = reference_weight.device
        self.memory = self._new_memory(batch_size)
        self.load_observers: list[LoadObserver] = []
        self._steps_pushed = 0
        self._step_state: _StepState | None = None
        self._removed = False

        self._tap = PrefixKVTap(
            model,
            self.adapter,
            config.layers,
            self._on_prefix_kv,
            capture_query=config.retrieval == "q2k" and config.loading == "residual",
        )
        self._concat: ConcatHistoryWrap | None = None
        self._watch: DecoderForwardWatch | None = None
        try:
            if config.loading == "concat":
                self._concat = ConcatHistoryWrap(model, self.adapter, config.layers, self._history)
            self._watch = DecoderForwardWatch(
                model, self.adapter, self._on_forward_start, self._on_forward_end
            )
        except BaseException:
            self.remove()
            raise

    # ------------------------------------------------------------------------------- public

    @contextmanager
    def step(self, prefix_len: int, t: float | Tensor | None = None) -> Iterator[TempoFit]:
        """One control step whose frame has ``prefix_len`` prefix tokens at time ``t``.

        ``t`` is in ``config.gap_unit``: a float for all sessions or a (B,) tensor. None means
        the number of frames pushed so far (gap_unit "step"/"chunk") or ``clock.now()``
        ("seconds"). Times must not go backwards within a session.
        """
        if self._removed:
            raise ValueError("this TempoFit was removed; build a new one to step again")
        if self._step_state is not None:
            raise ValueError("TempoFit.step() does not nest: a step is already running")
        if not is_int(prefix_len):
            raise ValueError(f"prefix_len must be an int, got {prefix_len!r}")
        if prefix_len <= 0:
            raise ValueError(f"prefix_len must be > 0, got {prefix_len}")
        if prefix_len > self.config.max_prefix_len:
            raise ValueError(
                f"prefix_len {prefix_len} > config.max_prefix_len {self.config.max_prefix_len}"
            )
        time = self._resolve_time(t)
        self._check_time_order(time)
        state = _StepState(prefix_len=prefix_len, time=time)
        self._step_state = state
        try:
            yield self
            if state.prefix_forward is PrefixForward.SUCCEEDED:
                self._push_frame(state)
        finally:
            self._step_state = None
            self._tap.prefix_len = None
            if self._concat is not None:
                self._concat.armed = False

    def reset(self) -> None:
        """Forget every frame (a new episode); the step counter restarts at 0."""
        if self._step_state is not None:
            raise ValueError("cannot reset() inside a step")
        self.memory.reset()
        self._steps_pushed = 0

    def remove(self) -> None:
        """Remove every hook and wrapper: the model computes exactly as before TempoFit."""
        self._tap.remove()
        if self._concat is not None:
            self._concat.remove()
        if self._watch is not None:
            self._watch.remove()
        self._removed = True

    @property
    def steps_pushed(self) -> int:
        """Frames pushed since construction or ``reset()`` (the default t for step units)."""
        return self._steps_pushed

    def set_batch_size(self, batch_size: int) -> None:
        """Give the memory ``batch_size`` sessions; only while it holds no frame (ValueError
        otherwise: stored frames belong to the sessions they were pushed for)."""
        if batch_size == self.memory.batch_size:
            return
        if self._steps_pushed or any(self.memory.num_frames(layer) for layer in self.config.layers):
            raise ValueError(
                f"forward batch size {batch_size} != the memory's "
                f"{self.memory.batch_size} sessions (reset() does not change it; build a "
                f"TempoFit with batch_size={batch_size})"
            )
        self.memory = self._new_memory(batch_size)

    def state_dict(self) -> dict[str, Any]:
        """The memory's state plus the step counter, so a session restored in another process
        goes on exactly (same default t; the memory's frame times keep the time-order check)."""
        state = dict(self.memory.state_dict())
        state[STEPS_PUSHED_KEY] = self._steps_pushed
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()``; validates before changing anything."""
        if self._step_state is not None:
            raise ValueError("cannot load_state_dict() inside a step")
        memory_state = {k: v for k, v in state.items() if not k.startswith(TEMPOFIT_KEY_PREFIX)}
        steps = state.get(STEPS_PUSHED_KEY)
        if not is_int(steps) or steps < 0:
            raise ValueError(f"state[{STEPS_PUSHED_KEY!r}] must be an int >= 0, got {steps!r}")
        self.memory.load_state_dict(memory_state)
        self._steps_pushed = steps

    # ------------------------------------------------------------------------------- internals

    def _new_memory(self, batch_size: int) -> LayerwiseKVMemory:
        return LayerwiseKVMemory(
            self.config,
            num_kv_heads=self.geometry.num_kv_heads,
            head_dim=self.geometry.head_dim,
            batch_size=batch_size,
            dtype=self._dtype,
            device=self._device,
        )

    def _resolve_time(self, t: float | Tensor | None) -> float | Tensor:
        if t is None:
            if self.config.gap_unit == "seconds":
                return float(self.clock.now())
            return float(self._steps_pushed)
        if isinstance(t, Tensor):
            if t.dtype == torch.bool or t.dtype.is_complex or t.dim() > 1:
                raise ValueError(f"t must be a float or a (B,) tensor, got {t.dtype} {t.shape}")
            return t.detach().to(device="cpu", dtype=torch.float64)
        if not is_real(t):
            raise ValueError(f"t must be a float or a (B,) tensor, got {t!r}")
        return float(t)

    def _check_time_order(self, time: float | Tensor) -> None:
        """Fail before the forward if ``time`` is earlier than a session's newest frame."""
        if self._steps_pushed:  # an empty memory may still be rebuilt for another batch size
            self.memory.check_time(time, action="step")

    def _on_forward_start(self, info: ForwardInfo) -> None:
        state = self._step_state
        if state is None or state.prefix_forward.finished or info.start_position != 0:
            return  # outside a step, or a later (cached decoding) forward: pass through
        if state.prefix_len > info.seq_len:
            raise ValueError(
                f"prefix_len {state.prefix_len} > sequence length {info.seq_len} of the forward"
            )
        if info.batch_size != self.memory.batch_size:
            self.set_batch_size(info.batch_size)
        state.prefix_forward = PrefixForward.RUNNING
        self._tap.prefix_len = state.prefix_len
        if self._concat is not None:
            self._concat.armed = True

    def _on_forward_end(self, succeeded: bool) -> None:
        state = self._step_state
        self._tap.prefix_len = None
        if self._concat is not None:
            self._concat.armed = False
        if state is not None and state.prefix_forward is PrefixForward.RUNNING:
            # Even if the caller catches the error and the step ends normally, a frame whose
            # forward failed is not pushed.
            state.prefix_forward = PrefixForward.SUCCEEDED if succeeded else PrefixForward.FAILED

    def _on_prefix_kv(
        self, layer: int, query: Tensor | None, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor] | None:
        """Remember the raw frame K/V (B, H, S, D) and return the loaded K/V, if any."""
        state = self._step_state
        assert state is not None
        state.frames[layer] = (key, value)
        if self.config.loading != "residual":
            return None
        group_query = None
        if self.config.retrieval == "q2k":
            assert query is not None
            batch, _, seq_len, dim = query.shape
            kv_heads, group = self.geometry.num_kv_heads, self.geometry.group_size
            group_query = query.reshape(batch, kv_heads, group, seq_len, dim).mean(dim=2)
        k_hat, v_hat = self.memory.load(layer, key, value, state.time, query=group_query)
        if self.load_observers:
            event = LoadEvent(
                layer=layer,
                time=state.time,
                query=key if group_query is None else group_query,
                k_t=key,
                v_t=value,
                k_hat=k_hat,
                v_hat=v_hat,
            )
            for observer in self.load_observers:
                observer(event)
        if k_hat is key and v_hat is value:
            return None  # empty memory: leave the model's own tensors bit-exact
        return k_hat, v_hat

    def _history(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """History for the concat ablation: (k, v (B, H, L, D), valid (B, L), positions (L,))."""
        if self.memory.num_frames(layer) == 0:
            return None
        k_hist, v_hist, _, hist_valid = self.memory.history(layer)
        slot_len = self.memory.slot_len(layer)
        positions = torch.arange(k_hist.shape[2], device=k_hist.device) % slot_len
        return k_hist, v_hist, hist_valid, positions

    def _push_frame(self, state: _StepState) -> None:
        missing = [layer for layer in self.config.layers if layer not in state.frames]
        if missing:
            raise RuntimeError(
                f"the prefix forward did not reach layers {missing} (did it fail inside the "
                f"step?); no frame was pushed"
            )
        # All or nothing: the memory validates every layer before it stores any.
        self.memory.push_frame(
            {layer: state.frames[layer] for layer in self.config.layers}, state.time
        )
        self._steps_pushed += 1

    def __repr__(self) -> str:
        return (
            f"TempoFit(family={self.adapter.name}, layers={list(self.config.layers)}, "
            f"capacity={self.config.capacity}, frames={self._steps_pushed})"
        )

    def __enter__(self) -> TempoFit:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
