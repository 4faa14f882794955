"""EM-LLM episodic memory on a frozen transformers causal LM: input far longer than its window.

Shapes: Hq = query heads, H = KV heads (Hq = G * H; query head ``h * G + g`` reads KV head
``h``, as transformers' ``repeat_kv``), D = head dim, T = tokens of the current chunk, V = vocab.

Stream layout. Token ``i`` of the stream goes, once processed, to one of three places:

- the sinks: the first ``n_init`` tokens, always attended;
- the local window: the tokens after the last event, always attended;
- an event: when the local window reaches ``n_local + chunk_size`` tokens, its oldest tokens
  (beyond the newest ``n_local``) are segmented by surprise (``surprise_boundaries``), the
  boundaries refined on the key-similarity graph of their pre-RoPE keys at
  ``similarity_layers`` (``key_similarity`` + ``refine_boundaries``), and each event is stored
  in the ``EventStore`` with its pre-RoPE K/V and representative keys at every layer.

A token is in exactly one place at a time and an event only holds tokens that have left the
local window, so no query can see a key twice (once locally, once through memory).

Chunks. Input is processed in chunks of at most ``chunk_size`` tokens, cut so that the local
window never exceeds ``n_local + chunk_size`` tokens (chunks that fill the sinks stop at
``n_init``). Each chunk's queries, at every layer, attend under ONE fp32 softmax to::

    [sinks] [retrieved events, temporal order] [local window] [chunk, causal]

The events are chosen per layer with ``retrieve_packed`` (``retrieve_events`` on representatives
the event store packs once per change of its events) from the chunk's pre-RoPE queries and
the events' pre-RoPE representative keys (k_s similar + k_c contiguous, at most ``budget``
tokens). Generation is the same path with one-token chunks; retrieval runs at every step, or
every ``retrieve_every`` steps (the previous step's selection is reused in between). Each
layer keeps its assembled context RoPE'd in a buffer: while its selection, sinks and local
start stay the same (decoding without eviction), a step only appends its own token.

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
and queries there. So no position exceeds ``n_init + budget + n_local + chunk_size - 1``. When
every event is retrieved the packed positions are the absolute ones: the output then equals
the plain model's (full attention), whatever the chunk size.

Implementation. Nothing is monkeypatched: each ``self_attn`` of this one model instance gets an
instance-attribute ``forward`` (deleted again by ``remove()``) which, while armed, computes the
attention itself from the module's own ``q_proj``/``k_proj``/``v_proj``, q/k norms, the
decoder's rotary embedding and ``o_proj``, ignoring the mask, position embeddings and cache the
decoder passes; unarmed it calls the original forward. Each chunk runs the model's own forward
(``use_cache=False``), so embeddings, norms, MLPs and the LM head are the model's. The K/V of
sinks and local window are kept here, per layer, before RoPE: the transformers cache is not
used.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.episodic import (
    EpisodicConfig,
    Event,
    EventStore,
    TensorBacking,
    key_similarity,
    refine_boundaries,
    retrieve_packed,
    select_representatives,
    surprise_boundaries,
    token_surprise,
)
from memory.episodic.checks import is_int
from policies.hf import (
    AttentionAdapter,
    HeadLayout,
    InstanceForwardPatches,
    adapter_for,
    apply_rope,
    text_config,
)

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")

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
    reuse: bool
    kv: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    retrieved: dict[int, list[int]] = field(default_factory=dict)
    sizes: dict[int, int] | None = None


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
        if not is_int(retrieve_every):
            raise ValueError(f"retrieve_every must be an int >= 1, got {retrieve_every!r}")
        if retrieve_every < 1:
            raise ValueError(f"retrieve_every must be an int >= 1, got {retrieve_every!r}")
        self.adapter: AttentionAdapter = adapter_for(model)
        model_config = text_config(model)
        if model_config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"EpisodicLM supports model types {SUPPORTED_MODEL_TYPES}, got "
                f"{model_config.model_type!r}"
            )
        if getattr(model_config, "use_sliding_window", False):
            raise ValueError("EpisodicLM needs full-attention layers (use_sliding_window=False)")
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
        self.attention_observer: AttentionObserver | None = None
        self._rotary = rotary
        self._rope_cache: tuple[Tensor, Tensor] | None = None
        self._armed = False
        self._chunk: _ChunkState | None = None
        self._patches = InstanceForwardPatches()
        try:
            for layer in layers:
                attention = self.adapter.self_attention(model, layer)
                self.adapter.sources(attention)  # fails early if the family does not fit
                self._patches.install(attention, self._wrap(layer, attention, attention.forward))
        except BaseException:
            self.remove()
            raise
        self.reset()

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Forget the stream: sinks, local window, events (the store's memory), traces."""
        self.store.clear()
        self.tokens: list[int] = []
        self.surprise_values: list[float] = []
        self.boundaries_before: list[int] = []
        self.boundaries_after: list[int] = []
        self.retrievals: list[RetrievalRecord] = []
        self._sinks: dict[int, tuple[Tensor, Tensor]] = {}
        self._local: dict[int, tuple[Tensor, Tensor]] = {}
        self._local_start = 0
        self._prev_logits: Tensor | None = None
        self._next_event_id = 0
        self._decode_steps = 0
        self._selection: dict[int, list[int]] = {}
        self._contexts: dict[int, _RopedContext] = {}
        size = max(1, self.config.contiguity_queue)
        self._queues = {layer: deque[int](maxlen=size) for layer in range(self.geometry.num_layers)}

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
    def n_sinks(self) -> int:
        return min(len(self.tokens), self.config.n_init)

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
                room = config.n_local + config.chunk_size - self._local_len()
            count = min(config.chunk_size, room, ids.numel() - position)
            logits = self._forward_chunk(ids[position : position + count], phase)
            outputs.append(logits if return_logits else logits[-1:])
            position += count
        return torch.cat(outputs) if return_logits else outputs[-1][0]

    def _local_len(self) -> int:
        return len(self.tokens) - self._local_start

    def _forward_chunk(self, chunk: Tensor, phase: str) -> Tensor:
        """Run the model on ``chunk`` (T,) with episodic attention; commit it; logits (T, V)."""
        reuse = phase == "decode" and self._decode_steps % self.retrieve_every != 0
        if phase == "decode":
            self._decode_steps += 1
        self._chunk = _ChunkState(start=len(self.tokens), phase=phase, reuse=reuse)
        device = next(self.model.parameters()).device
        try:
            with self._arm():
                logits = self.model(input_ids=chunk[None].to(device), use_cache=False).logits[0]
            self._commit(chunk, logits.float(), self._chunk)
        finally:
            self._chunk = None
        return logits

    @contextmanager
    def _arm(self) -> Any:
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def _commit(self, chunk: Tensor, logits: Tensor, state: _ChunkState) -> None:
        """Append the chunk's K/V to sinks and local window, record surprise and retrievals,
        and turn tokens leaving the local window into events."""
        config = self.config
        start, count = state.start, chunk.numel()
        self.retrievals.append(
            RetrievalRecord(
                start,
                start + count,
                self.n_sinks,
                self._local_start,
                state.phase,
                state.retrieved,
            )
        )
        surprise = token_surprise(logits, chunk.to(logits.device), self._prev_logits)
        self.surprise_values.extend(surprise.tolist())
        self._prev_logits = logits[-1]
        to_sinks = max(0, min(count, config.n_init - self.n_sinks))
        for layer, (k, v) in state.kv.items():
            if to_sinks:  # once the sinks are full, do not copy them again every step
                self._sinks[layer] = _append(
                    self._sinks.get(layer), k[:, :to_sinks], v[:, :to_sinks]
                )
            self._local[layer] = _append(self._local.get(layer), k[:, to_sinks:], v[:, to_sinks:])
        self.tokens.extend(chunk.tolist())
        # The local window starts after the sinks: every reader of _local_start relies on it.
        self._local_start = max(self._local_start, self.n_sinks)
        if self._local_len() >= config.n_local + config.chunk_size:
            self._evict(self._local_len() - config.n_local)

    def _evict(self, count: int) -> None:
        """Move the oldest ``count`` local tokens into events (or drop them without memory)."""
        start = self._local_start
        if self.memory:
            self._form_events(start, count)
        for layer, (k, v) in self._local.items():
            self._local[layer] = (k[:, count:], v[:, count:])
        self._local_start = start + count

    def _form_events(self, start: int, count: int) -> None:
        """Segment stream tokens ``[start, start + count)`` into events and store them."""
        config = self.config
        surprise = torch.tensor(self.surprise_values[start : start + count], dtype=torch.float64)
        context = torch.tensor(
            self.surprise_values[max(0, start - config.surprise_window) : start],
            dtype=torch.float64,
        )
        bounds = surprise_boundaries(
            surprise,
            config.gamma,
            config.surprise_window,
            min_size=config.min_event_size,
            max_size=config.max_event_size,
            context=context if context.numel() else None,
        )
        refined = bounds
        if config.refine_metric != "none" and bounds:
            graph = torch.stack(
                [
                    key_similarity(self._local[layer][0][:, :count])
                    for layer in self.similarity_layers
                ]
            ).mean(0)
            refined = refine_boundaries(
                graph,
                bounds,
                metric=config.refine_metric,
                min_size=config.min_event_size,
                window=config.refine_window,
                max_size=config.max_event_size,
            )
        self.boundaries_before.extend(start + b for b in bounds)
        self.boundaries_after.extend(start + b for b in refined)
        edges = [0, *refined, count]
        for a, b in itertools.pairwise(edges):
            tensors: dict[str, Tensor] = {}
            representatives: dict[str, Tensor] = {}
            for layer, (k, v) in self._local.items():
                keys = k[:, a:b]
                tensors[f"layer.{layer}.k"] = keys
                tensors[f"layer.{layer}.v"] = v[:, a:b]
                representatives[f"layer.{layer}"] = select_representatives(
                    keys, n_repr=config.n_repr
                )
            self.store.add(
                Event(self._next_event_id, start + a, start + b, tensors, representatives)
            )
            self._next_event_id += 1

    # ------------------------------------------------------------------ attention

    def _wrap(
        self, layer: int, attention: nn.Module, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self._armed:
                return original(hidden_states, *args, **kwargs)
            return self._attend(layer, attention, hidden_states), None

        forward._episodic_owner = self  # type: ignore[attr-defined]  # for remove()
        return forward

    def _project(self, attention: nn.Module, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-RoPE q (Hq, T, D), k and v (H, T, D) of ``hidden`` (1, T, hidden)."""
        head_dim = self.geometry.head_dim
        adapter = self.adapter
        out = []
        for projection, source, layout in (
            ("q_proj", adapter.query_module, adapter.query_layout),
            ("k_proj", adapter.key_module, adapter.key_layout),
            ("v_proj", adapter.value_module, adapter.value_layout),
        ):
            heads = getattr(attention, projection)(hidden)[0].view(hidden.shape[1], -1, head_dim)
            if source != projection:  # a per-head norm (qwen3's q_norm/k_norm) over D
                assert layout is not HeadLayout.FLAT
                heads = getattr(attention, source)(heads)
            out.append(heads.transpose(0, 1))
        return out[0], out[1], out[2]

    def _attend(self, layer: int, attention: nn.Module, hidden: Tensor) -> Tensor:
        """Attention output (1, T, hidden) of one layer for the chunk in flight."""
        state = self._chunk
        assert state is not None
        q, k, v = self._project(attention, hidden)
        state.kv[layer] = (k, v)
        tokens = q.shape[1]
        context = self._context(layer, q, state)
        past = context.length
        cos, sin = self._rope_table(past + tokens)
        cos, sin = cos[past:], sin[past:]
        context.append(
            apply_rope(k.float(), cos, sin),
            v.float(),
            torch.arange(state.start, state.start + tokens),
        )
        keys, values, index = context.view()
        query = apply_rope(q.float(), cos, sin)
        visible = torch.ones(tokens, past + tokens, dtype=torch.bool, device=keys.device)
        visible[:, past:] = torch.ones(tokens, tokens, dtype=torch.bool, device=keys.device).tril()
        if self.attention_observer is not None:
            self.attention_observer(
                layer, torch.arange(state.start, state.start + tokens), index, visible.cpu()
            )
        output = F.scaled_dot_product_attention(
            query[None],
            keys[None],
            values[None],
            attn_mask=visible,
            scale=float(getattr(attention, "scaling", self.geometry.head_dim**-0.5)),
            enable_gqa=True,
        )
        output = output[0].transpose(0, 1).reshape(1, tokens, -1).to(hidden.dtype)
        output_projection = attention.o_proj
        assert isinstance(output_projection, nn.Module)
        return output_projection(output)

    def _context(self, layer: int, query: Tensor, state: _ChunkState) -> _RopedContext:
        """The layer's assembled ``[sinks][events][local]`` for this chunk: reused from the
        previous chunk when it holds the same events, sinks and local start and every token
        committed since (decoding), else rebuilt."""
        ids = self._retrieve(layer, query, state)
        local_start = self._local_start
        signature = (tuple(ids), self.n_sinks, local_start)
        context = self._contexts.get(layer)
        if context is not None and context.signature == signature and context.end == state.start:
            state.retrieved[layer] = context.event_ids
            return context
        events = [e for e in (self.store.get(i) for i in ids) if e is not None]
        state.retrieved[layer] = [e.event_id for e in events]
        sinks, local = self._sinks.get(layer), self._local.get(layer)
        device, dtype = query.device, torch.float32
        parts_k = [sinks[0]] if sinks is not None else []
        parts_v = [sinks[1]] if sinks is not None else []
        parts_k += [e.tensors[f"layer.{layer}.k"].to(device) for e in events]
        parts_v += [e.tensors[f"layer.{layer}.v"].to(device) for e in events]
        if local is not None:
            parts_k.append(local[0])
            parts_v.append(local[1])
        index = [*range(self.n_sinks)]
        index += [i for e in events for i in range(e.start, e.end)]
        index += range(local_start, state.start)
        heads, dim = self.geometry.num_kv_heads, self.geometry.head_dim
        empty = torch.zeros(heads, 0, dim, device=device, dtype=dtype)
        keys = torch.cat([empty, *(p.to(dtype) for p in parts_k)], dim=1)
        values = torch.cat([empty, *(p.to(dtype) for p in parts_v)], dim=1)
        cos, sin = self._rope_table(keys.shape[1])
        capacity = keys.shape[1] + self.config.n_local + 2 * self.config.chunk_size
        context = _RopedContext(signature, state.retrieved[layer], capacity, heads, dim, device)
        context.append(apply_rope(keys, cos, sin), values, torch.tensor(index, dtype=torch.long))
        self._contexts[layer] = context
        return context

    def _rope_table(self, length: int) -> tuple[Tensor, Tensor]:
        """cos, sin (length, D) fp32 of positions ``0..length-1`` (the decoder's rotary
        embedding, computed once for the longest context seen: angles depend on the position
        only for the supported rope types)."""
        if self._rope_cache is None or self._rope_cache[0].shape[0] < length:
            size = max(length, self.config.n_init + self.config.budget + self.config.n_local)
            size += self.config.chunk_size
            device = next(self.model.parameters()).device
            dummy = torch.zeros(1, dtype=torch.float32, device=device)
            cos, sin = self._rotary(dummy, torch.arange(size, device=device)[None])
            self._rope_cache = (cos[0].float(), sin[0].float())
        return self._rope_cache[0][:length], self._rope_cache[1][:length]

    def _retrieve(self, layer: int, query: Tensor, state: _ChunkState) -> list[int]:
        """Ids (temporal order) of the events this layer's chunk attends, chosen by
        ``retrieve_packed`` from its pre-RoPE queries (Hq, T, D), or the previous selection on
        reuse steps."""
        if not self.memory or len(self.store) == 0:
            return []
        config = self.config
        if state.reuse and layer in self._selection:
            ids = self._selection[layer]
        else:
            packed = self.store.packed_representatives(f"layer.{layer}")
            if packed is None:
                return []
            if state.sizes is None:
                state.sizes = self.store.sizes()
            ids = retrieve_packed(
                query,
                *packed,
                state.sizes,
                config.k_similar,
                config.k_contiguous,
                config.budget,
                self._queues[layer],
            )
            self._selection[layer] = ids
        return ids


class _RopedContext:
    """One layer's assembled keys (RoPE'd at positions 0..n-1), values and the stream index
    of each key, in buffers (H, capacity, D) that later tokens are appended to in place."""

    def __init__(
        self,
        signature: tuple[Any, ...],
        event_ids: list[int],
        capacity: int,
        heads: int,
        dim: int,
        device: torch.device,
    ) -> None:
        self.signature = signature
        self.event_ids = event_ids
        self.keys = torch.empty(heads, capacity, dim, device=device)
        self.values = torch.empty(heads, capacity, dim, device=device)
        self.index = torch.empty(capacity, dtype=torch.long)
        self.length = 0

    @property
    def end(self) -> int:
        """Stream index after the last appended token (0 when empty)."""
        return int(self.index[self.length - 1]) + 1 if self.length else 0

    def append(self, keys: Tensor, values: Tensor, index: Tensor) -> None:
        """Append RoPE'd ``keys`` and ``values`` (H, n, D) of stream tokens ``index`` (n,)."""
        count = keys.shape[1]
        if self.length + count > self.keys.shape[1]:
            grow = self.length + count - self.keys.shape[1]
            self.keys = torch.cat([self.keys, torch.empty_like(self.keys[:, :grow])], dim=1)
            self.values = torch.cat([self.values, torch.empty_like(self.values[:, :grow])], dim=1)
            self.index = torch.cat([self.index, torch.empty_like(self.index[:grow])])
        stop = self.length + count
        self.keys[:, self.length : stop] = keys
        self.values[:, self.length : stop] = values
        self.index[self.length : stop] = index
        self.length = stop

    def view(self) -> tuple[Tensor, Tensor, Tensor]:
        """Keys, values (H, n, D) and stream indices (n,) of the tokens held."""
        n = self.length
        return self.keys[:, :n], self.values[:, :n], self.index[:n]


def _append(current: tuple[Tensor, Tensor] | None, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``current`` K/V (H, L, D) with ``k``/``v`` (H, T, D) appended along tokens."""
    if current is None:
        return k.clone(), v.clone()
    return torch.cat([current[0], k], dim=1), torch.cat([current[1], v], dim=1)


def sliding_window_baseline(model: nn.Module, config: EpisodicConfig) -> EpisodicLM:
    """Sinks + a local window as wide as EpisodicLM's whole attention span (``n_local +
    budget``), no memory: the baseline of the same attention cost per query."""
    span = config.n_local + config.budget
    wide = EpisodicConfig(**{**config.model_dump(), "n_local": span, "budget": span})
    return EpisodicLM(model, wide, memory=False)


PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)


def passkey_prompt(key: int, repeats: int, depth: float) -> str:
    """The pass-key probe (Mohtashami & Jaggi, 2023) used by the tests and the benchmark: a
    pass key hidden at ``depth`` (0..1) of ``repeats`` filler sentences (~24 SmolLM2 tokens
    each), then the question; a model that retrieves it continues with the key."""
    if not 0.0 <= depth <= 1.0 or repeats < 0:
        raise ValueError(f"need 0 <= depth <= 1 and repeats >= 0, got {depth}, {repeats}")
    before = int(repeats * depth)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    return (
        "There is an important pass key hidden inside a lot of irrelevant text. Find it and "
        "memorize it.\n"
        + PASSKEY_FILLER * before
        + needle
        + PASSKEY_FILLER * (repeats - before)
        + "\nWhat is the pass key? The pass key is"
    )


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "EpisodicLM",
    "RetrievalRecord",
    "passkey_prompt",
    "sliding_window_baseline",
]
