"""EM-LLM episodic memory on a frozen transformers causal LM: input far longer than its window.

Shapes: Hq = query heads, H = KV heads (Hq = G * H; query head ``h * G + g`` reads KV head
``h``, as transformers' ``repeat_kv``; H = 1 is multi-query attention), D = head dim, T = tokens
of the current chunk, V = vocab.

Stream layout. Token ``i`` of the stream goes, once processed, to one of three places:

- the sinks: the first ``n_init`` tokens, always attended;
- the local window: the tokens after the last event, always attended;
- an event: when the local window reaches ``n_local + chunk_size`` tokens, its oldest tokens
  (beyond the newest ``n_local``) are cut into events by ``EventFormer``
  (``policies.episodic_events``: surprise segmentation, refinement on the key-similarity graph
  at ``similarity_layers``) and stored in the ``EventStore`` with their pre-RoPE K/V and
  representative keys.

Sinks and local window are kept per layer, before RoPE, by ``StreamWindow``
(``policies.episodic_stream``). A token is in exactly one place at a time and an event only
holds tokens that have left the local window, so no query can see a key twice (once locally,
once through memory).

Chunks. Input is processed in chunks of at most ``chunk_size`` tokens, cut so that the local
window never exceeds ``n_local + chunk_size`` tokens (chunks that fill the sinks stop at
``n_init``). Each chunk's queries, at every layer, attend under ONE fp32 softmax to::

    [sinks] [retrieved events, temporal order] [local window] [chunk, causal]

assembled by ``ContextAssembler`` (``policies.episodic_context``), which also chooses the events
per layer (``retrieve_packed``: k_s similar + k_c contiguous, at most ``budget`` tokens) and
keeps each layer's context RoPE'd in a buffer that decoding steps append to. Generation is the
same path with one-token chunks; retrieval runs at every step, or every ``retrieve_every``
steps (the previous step's selection is reused in between).

Sliding-window layers (Gemma 2/3, Qwen2 with ``use_sliding_window``) keep their own attention
pattern: they retrieve no events, keep the K/V of their last ``sliding_window - 1`` tokens
whatever ``n_local`` is, and each query attends the tokens fewer than ``sliding_window`` stream
positions back (sinks included only while that close), as in the plain model, so those layers
compute exactly what they compute there. Events keep K/V at the full-attention layers only,
which are the layers that retrieve; ``n_local``, ``budget`` and the packed positions concern
those layers.

Surprise ``s_t = -log p(x_t | x_<t)`` comes from the logits this wrapped model produces (the
memory-augmented forward), so segmentation needs the full logits of every chunk.

API: ``generate(input_ids, max_new_tokens)`` starts a fresh stream (``reset()``) and decodes
greedily; ``feed(input_ids)`` and ``step(token)`` continue the current stream. Traces for
plotting: ``surprise`` (N,), ``boundaries_before`` / ``boundaries_after`` (stream indices of
event starts before / after refinement), ``retrievals`` (a ``RetrievalRecord`` per chunk or
step: which events each layer attended), ``events()``; ``attention_observer`` sees the stream
index of every key each query may attend (the no-duplicate test uses it).

Positions (InfLLM's scheme). Memory keeps keys before RoPE. At attention time the assembled
context above gets positions ``0, 1, ..., S - 1`` in that order (sinks at ``0..n_init-1``,
events packed after them, local window after those, queries last) and RoPE is applied to keys
and queries there (with the layer's own rotary table where a family has several). So no
position exceeds ``n_init + budget + n_local + chunk_size - 1``. When every event is retrieved
the packed positions are the absolute ones: the output then equals the plain model's (full
attention), whatever the chunk size.

Implementation. Nothing is monkeypatched: each ``self_attn`` of this one model instance gets an
instance-attribute ``forward`` (deleted again by ``remove()``) which, while armed, computes the
attention itself (``policies.episodic_attention``) from the module's own
``q_proj``/``k_proj``/``v_proj``, q/k norms, scaling, logit soft-capping, the decoder's rotary
embedding and ``o_proj``, ignoring the mask, position embeddings and cache the decoder passes;
unarmed it calls the original forward. Each chunk runs the model's own forward
(``use_cache=False``), so embeddings, norms, MLPs and the LM head are the model's; the
transformers cache is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memory.episodic import EpisodicConfig, EventStore, TensorBacking, token_surprise
from memory.numbers import is_int
from policies.attention_adapters import AttentionAdapter, adapter_for, text_config
from policies.episodic_attention import attend, project, visibility
from policies.episodic_context import ContextAssembler, RopeTables
from policies.episodic_events import EventFormer
from policies.episodic_stream import KV, StreamWindow
from policies.instance_patches import InstanceForwardPatches
from policies.rope import apply_rope

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

AttentionObserver = Callable[[int, Tensor, Tensor, Tensor], None]
"""``(layer, query_index (T,), key_index (S,), visible (T, S) bool)``: stream indices of the
chunk's queries and of every assembled key, and which key each query may attend."""


@dataclass(frozen=True)
class RetrievalRecord:
    """What one chunk (or generation step) attended, for plotting and tests.

    ``start``/``end``: the chunk's stream tokens ``[start, end)``. ``n_sinks``: sink tokens
    ``[0, n_sinks)``; ``local_start``: the local window is ``[local_start, start)``.
    ``events``: layer -> ids of the retrieved events (temporal order).
    """

    start: int
    end: int
    n_sinks: int
    local_start: int
    phase: str
    events: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class _ChunkState:
    """Per-layer pre-RoPE K/V (H, T, D) of the chunk in flight and what it retrieved."""

    start: int
    phase: str
    kv: dict[int, KV] = field(default_factory=dict)
    retrieved: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _LayerAttention:
    """What the episodic attention needs of one layer's ``self_attn``."""

    module: nn.Module
    scale: float
    sliding_window: int | None  # tokens a query sees, itself included; None: full attention
    softcap: float | None  # Gemma 2's attention logit soft-capping


class EpisodicLM:
    """Greedy long-context generation with EM-LLM episodic memory on a frozen causal LM.

    ``model``: a transformers causal LM of a family in ``SUPPORTED_MODEL_TYPES``. ``store``: an
    ``EventStore``, or a backing store (``put_tensors``/``get_tensors``, e.g. a
    ``kv_store.LocalStore``) to write events through to, or None (CPU ``EventStore`` with
    ``config.cache_events`` hot events). ``similarity_layers``: the layers whose pre-RoPE keys
    build the refinement graph (default: the middle layer). ``memory=False`` drops tokens that
    leave the local window instead of forming events: a sinks + sliding-window baseline
    (StreamingLLM) on the same code path. ``retrieve_every``: generation steps per retrieval.
    """

    def __init__(
        self,
        model: nn.Module,
        config: EpisodicConfig,
        store: EventStore | TensorBacking | None = None,
        *,
        similarity_layers: Sequence[int] | None = None,
        memory: bool = True,
        retrieve_every: int = 1,
    ) -> None:
        if not isinstance(config, EpisodicConfig):
            raise ValueError(f"config must be a memory.EpisodicConfig, got {type(config).__name__}")
        if not is_int(retrieve_every) or retrieve_every < 1:
            raise ValueError(f"retrieve_every must be an int >= 1, got {retrieve_every!r}")
        self.adapter: AttentionAdapter = adapter_for(model)
        model_config = text_config(model)
        if model_config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"EpisodicLM supports model types {SUPPORTED_MODEL_TYPES}, got "
                f"{model_config.model_type!r}"
            )
        if getattr(model_config, "use_bidirectional_attention", False):
            raise ValueError("EpisodicLM needs a causal decoder (use_bidirectional_attention)")
        decoder = self.adapter.decoder(model)
        rotary = getattr(decoder, "rotary_emb", None)
        if not isinstance(rotary, nn.Module):
            raise ValueError(f"{type(decoder).__name__} has no 'rotary_emb' module")
        self.model = model
        self.config = config
        self.geometry = self.adapter.geometry(model)
        self.vocab_size = int(model_config.vocab_size)
        layers = list(range(self.geometry.num_layers))
        if similarity_layers is None:
            similarity_layers = [self.geometry.num_layers // 2]
        chosen = list(similarity_layers)
        if not chosen or any(isinstance(x, bool) or x not in layers for x in chosen):
            raise ValueError(
                f"similarity_layers must be a non-empty list of layer indices in "
                f"[0, {self.geometry.num_layers}), got {similarity_layers!r}"
            )
        self.similarity_layers = chosen
        self.memory = memory
        self.retrieve_every = retrieve_every
        if isinstance(store, EventStore):
            self.store = store
        elif store is None or isinstance(store, TensorBacking):
            self.store = EventStore(cache_events=config.cache_events, backing=store)
        else:
            raise ValueError("store must be an EventStore, a backing store or None")
        self._layers = [self._layer_attention(model, layer) for layer in layers]
        # The layers that retrieve events: full-attention ones (sliding layers keep their window).
        self.memory_layers = [i for i, a in enumerate(self._layers) if a.sliding_window is None]
        if memory and not self.memory_layers:
            raise ValueError("EpisodicLM needs a full-attention layer to retrieve events at")
        self.attention_observer: AttentionObserver | None = None
        self.surprise_values: list[float] = []
        self.retrievals: list[RetrievalRecord] = []
        self._window = StreamWindow(
            config.n_init,
            {i: a.sliding_window - 1 for i, a in enumerate(self._layers) if a.sliding_window},
        )
        self._events = EventFormer(config, self.store, chosen, self.memory_layers)
        self._rope = RopeTables(
            rotary,
            list(getattr(model_config, "layer_types", None) or [None] * len(layers)),
            config.n_init + config.budget + config.n_local + config.chunk_size,
        )
        self._context = ContextAssembler(
            config,
            self.store,
            self._window,
            self._rope,
            self.memory_layers if memory else [],
            self.geometry.num_kv_heads,
            self.geometry.head_dim,
        )
        self._prev_logits: Tensor | None = None
        self._decode_steps = 0
        self._armed = False
        self._chunk: _ChunkState | None = None
        self._patches = InstanceForwardPatches()
        try:
            for layer in layers:
                attention = self._layers[layer].module
                self.adapter.sources(attention)  # fails early if the family does not fit
                self._patches.install(attention, self._wrap(layer, attention.forward))
        except BaseException:
            self.remove()
            raise
        self.reset()

    def _layer_attention(self, model: nn.Module, layer: int) -> _LayerAttention:
        module = self.adapter.self_attention(model, layer)
        window = getattr(module, "sliding_window", None)
        softcap = getattr(module, "attn_logit_softcapping", None)
        return _LayerAttention(
            module=module,
            scale=float(getattr(module, "scaling", self.geometry.head_dim**-0.5)),
            sliding_window=None if window is None else int(window),
            softcap=None if softcap is None else float(softcap),
        )

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Forget the stream: sinks, local window, events (the store's memory), traces."""
        self.store.clear()
        self.surprise_values = []
        self.retrievals = []
        self._window.clear()
        self._events.clear()
        self._context.clear()
        self._prev_logits = None
        self._decode_steps = 0

    def remove(self) -> None:
        """Restore every wrapped ``self_attn`` exactly; the instance is unusable afterwards.

        RuntimeError (nothing changed) if another wrapper was installed over this one since:
        wrappers must be removed in reverse order of installation.
        """
        for attention in self._patches.modules:
            current = attention.__dict__.get("forward")
            if getattr(current, "_episodic_owner", None) is not self:
                raise RuntimeError(
                    f"{type(attention).__name__}.forward was wrapped again after this EpisodicLM "
                    "(e.g. by another EpisodicLM); remove that wrapper first"
                )
        self._patches.restore()
        self._armed = False

    @property
    def surprise(self) -> Tensor:
        """Surprise (N,) fp32 of every stream token (``token_surprise``; token 0 has 0)."""
        return torch.tensor(self.surprise_values, dtype=torch.float32)

    @property
    def num_tokens(self) -> int:
        """Tokens in the stream so far (prompt and generated)."""
        return self._window.num_tokens

    @property
    def n_sinks(self) -> int:
        return self._window.n_sinks

    @property
    def boundaries_before(self) -> list[int]:
        """Stream indices of event starts from surprise, before refinement."""
        return self._events.boundaries_before

    @property
    def boundaries_after(self) -> list[int]:
        """Stream indices of event starts after refinement."""
        return self._events.boundaries_after

    def events(self) -> list[tuple[int, int, int]]:
        """``(event_id, start, end)`` of the events in the store's memory, oldest first."""
        return [(e.event_id, e.start, e.end) for e in self.store]

    def feed(self, input_ids: Tensor, return_logits: bool = False) -> Tensor:
        """Append ``input_ids`` (1, T) to the stream; logits (V,) of its last token, or (T, V)
        of all its tokens with ``return_logits``."""
        ids = self._check_ids(input_ids)
        return self._feed(ids, "prefill", return_logits)

    def step(self, token: int) -> Tensor:
        """One generation step: append ``token`` to the stream; its logits (V,). Retrieval
        runs every ``retrieve_every`` steps (the previous selection is reused in between)."""
        if not self._patches:
            raise RuntimeError("EpisodicLM was removed from the model; create a new one")
        if (
            isinstance(token, bool)
            or not isinstance(token, int)
            or not 0 <= token < self.vocab_size
        ):
            raise ValueError(f"token must be an int in [0, {self.vocab_size}), got {token!r}")
        return self._feed(torch.tensor([token]), "decode", False)

    @torch.inference_mode()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, eos_token_id: int | None = None
    ) -> Tensor:
        """Greedy continuation (1, T + new) of ``input_ids`` (1, T), from a fresh stream.

        Stops after ``max_new_tokens`` or after emitting ``eos_token_id``.
        """
        ids = self._check_ids(input_ids)
        if not is_int(max_new_tokens):
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens}")
        self.reset()
        logits = self._feed(ids, "prefill", False)
        new: list[int] = []
        for step in range(max_new_tokens):
            token = int(logits.argmax())
            new.append(token)
            if token == eos_token_id or step == max_new_tokens - 1:
                break
            logits = self.step(token)
        return torch.cat([input_ids[0].to("cpu", torch.long), torch.tensor(new, dtype=torch.long)])[
            None
        ]

    # ------------------------------------------------------------------ stream processing

    def _check_ids(self, input_ids: Tensor) -> Tensor:
        if not self._patches:
            raise RuntimeError("EpisodicLM was removed from the model; create a new one")
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids must be a (1, T) tensor (batch size 1), got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty (T = 0)")
        if int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {self.vocab_size})")
        return input_ids[0].long()

    @torch.inference_mode()
    def _feed(self, ids: Tensor, phase: str, return_logits: bool) -> Tensor:
        """Process ``ids`` (T,) chunk by chunk; last logits (V,) or all (T, V)."""
        config = self.config
        outputs: list[Tensor] = []
        position = 0
        while position < ids.numel():
            if self.n_sinks < config.n_init:
                room = config.n_init - self.n_sinks
            else:
                room = config.n_local + config.chunk_size - self._window.local_len
            count = min(config.chunk_size, room, ids.numel() - position)
            logits = self._forward_chunk(ids[position : position + count], phase)
            outputs.append(logits if return_logits else logits[-1:])
            position += count
        return torch.cat(outputs) if return_logits else outputs[-1][0]

    def _forward_chunk(self, chunk: Tensor, phase: str) -> Tensor:
        """Run the model on ``chunk`` (T,) with episodic attention; commit it; logits (T, V)."""
        reuse = phase == "decode" and self._decode_steps % self.retrieve_every != 0
        if phase == "decode":
            self._decode_steps += 1
        start = self._window.num_tokens
        self._chunk = _ChunkState(start=start, phase=phase)
        self._context.begin(start, reuse)
        device = next(self.model.parameters()).device
        try:
            with self._arm():
                logits = self.model(input_ids=chunk[None].to(device), use_cache=False).logits[0]
            self._commit(chunk, logits.float(), self._chunk)
        finally:
            self._chunk = None
        return logits

    @contextmanager
    def _arm(self) -> Iterator[None]:
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def _commit(self, chunk: Tensor, logits: Tensor, state: _ChunkState) -> None:
        """Append the chunk's K/V to sinks and local window, record surprise and retrievals,
        and turn tokens leaving the local window into events."""
        config = self.config
        window = self._window
        start, count = state.start, chunk.numel()
        self.retrievals.append(
            RetrievalRecord(
                start,
                start + count,
                window.n_sinks,
                window.local_start,
                state.phase,
                state.retrieved,
            )
        )
        surprise = token_surprise(logits, chunk.to(logits.device), self._prev_logits)
        self.surprise_values.extend(surprise.tolist())
        self._prev_logits = logits[-1]
        window.append(state.kv, count)
        if window.local_len >= config.n_local + config.chunk_size:
            self._evict(window.local_len - config.n_local)

    def _evict(self, count: int) -> None:
        """Move the oldest ``count`` local tokens into events (or drop them without memory)."""
        if self.memory:
            start = self._window.local_start
            self._events.form(start, self._window.oldest(count), self.surprise_values)
        self._window.evict(count)

    # ------------------------------------------------------------------ attention

    def _wrap(self, layer: int, original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._armed:
                return original(hidden_states, *args, **kwargs)
            return self._attend(layer, hidden_states), None

        forward._episodic_owner = self  # type: ignore[attr-defined]  # for remove()
        return forward

    def _attend(self, layer: int, hidden: Tensor) -> Tensor:
        """Attention output (1, T, hidden) of one layer for the chunk in flight."""
        state = self._chunk
        assert state is not None
        spec = self._layers[layer]
        q, k, v = project(spec.module, self.adapter, hidden, self.geometry.head_dim)
        state.kv[layer] = (k, v)
        tokens = q.shape[1]
        context = self._context.context(layer, q)
        state.retrieved[layer] = context.event_ids
        past = context.length
        cos, sin = self._rope(layer, past + tokens, q.device)
        cos, sin = cos[past:], sin[past:]
        query_index = torch.arange(state.start, state.start + tokens)
        context.append(apply_rope(k.float(), cos, sin), v.float(), query_index)
        keys, values, index = context.view()
        visible = visibility(query_index, index, spec.sliding_window)
        if self.attention_observer is not None:
            self.attention_observer(layer, query_index, index, visible)
        output = attend(
            apply_rope(q.float(), cos, sin),
            keys,
            values,
            visible.to(keys.device),
            spec.scale,
            spec.softcap,
        )
        output = output.transpose(0, 1).reshape(1, tokens, -1).to(hidden.dtype)
        output_projection = spec.module.o_proj
        assert isinstance(output_projection, nn.Module)
        return output_projection(output)


def sliding_window_baseline(model: nn.Module, config: EpisodicConfig) -> EpisodicLM:
    """Sinks + a local window as wide as EpisodicLM's whole attention span (``n_local +
    budget``), no memory: the baseline of the same attention cost per query."""
    span = config.n_local + config.budget
    wide = EpisodicConfig(**{**config.model_dump(), "n_local": span, "budget": span})
    return EpisodicLM(model, wide, memory=False)


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "EpisodicLM",
    "RetrievalRecord",
    "sliding_window_baseline",
]
