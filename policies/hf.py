"""Reversible, per-instance attention wrapping for transformers 5.x decoder-only models.

Nothing here patches a class or a global function: every change is a hook or an instance
attribute on one model's modules, kept in a handle list and undone by ``remove()``.

How the pre-RoPE keys and values are reached. In every supported family the attention forward
computes, in this order (verified against transformers 5.24 ``modeling_*.py``)::

    llama, qwen2, gemma, gemma2:  q_proj -> k_proj -> v_proj          -> RoPE -> cache -> attn
    qwen3:                        q_proj -> q_norm -> k_proj -> k_norm -> v_proj -> RoPE -> ...
    gemma3:                       q_proj -> k_proj -> v_proj -> q_norm -> k_norm -> RoPE -> ...

and reads the projections only through ``.view()``/``.transpose()``, which share storage with
the module output. So a forward hook on the module that produces the final pre-RoPE keys (the
"key source": ``k_norm`` when present, else ``k_proj``), on ``v_proj`` and, for Q-to-K
retrieval, on the "query source" (``q_norm`` or ``q_proj``) can return a private copy of each
output and, once the last of them has run, overwrite the prefix tokens of those copies in place:
the attention forward sees the new K/V when it applies RoPE, whichever order the projections
ran in. An :class:`AttentionAdapter` per family names those modules and their output layout;
a registry keyed by ``config.model_type`` picks it (cf. vLLM's attention-backend registry).

The concat ablation (history tokens prepended to the keys) changes the sequence length, which
projection hooks cannot do. :class:`ConcatHistoryWrap` therefore wraps the chosen ``self_attn``
instances' ``forward`` (an instance attribute, deleted again by ``remove()``): it passes the
original forward a stand-in KV cache whose ``update()`` prepends the RoPE'd history to the keys
and values and an attention mask widened to cover them.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class HeadLayout(enum.Enum):
    """How a hooked module's output holds the heads of T tokens."""

    FLAT = "flat"  # (B, T, H * D): the output of a projection
    TOKEN_MAJOR = "bthd"  # (B, T, H, D): a per-head norm applied before the transpose
    HEAD_MAJOR = "bhtd"  # (B, H, T, D): a per-head norm applied after the transpose


def as_heads(output: Tensor, layout: HeadLayout, head_dim: int) -> Tensor:
    """A (B, H, T, D) view of ``output`` (no copy: writes to the view reach ``output``)."""
    if layout is HeadLayout.FLAT:
        batch, seq_len, _ = output.shape
        return output.view(batch, seq_len, -1, head_dim).transpose(1, 2)
    if layout is HeadLayout.TOKEN_MAJOR:
        return output.transpose(1, 2)
    return output


@dataclass(frozen=True)
class AttentionGeometry:
    """Sizes of a model's decoder attention."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA); query head i reads KV head ``i // group_size``."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class AttentionAdapter:
    """Where one family of decoder models keeps its pre-RoPE queries, keys and values.

    Families that agree share one instance (LLaMA, Qwen2, Gemma, Gemma2 all project with
    ``q_proj``/``k_proj``/``v_proj`` and nothing else before RoPE).
    """

    name: str
    model_types: tuple[str, ...]
    query_module: str = "q_proj"
    query_layout: HeadLayout = HeadLayout.FLAT
    key_module: str = "k_proj"
    key_layout: HeadLayout = HeadLayout.FLAT
    value_module: str = "v_proj"
    value_layout: HeadLayout = HeadLayout.FLAT
    # Concat needs one rotary embedding for all layers called as rotary_emb(x, position_ids).
    supports_concat: bool = True

    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that owns ``layers`` (e.g. ``LlamaModel`` inside ``LlamaForCausalLM``)."""
        candidates: list[Any] = [model, getattr(model, "model", None)]
        get_decoder = getattr(model, "get_decoder", None)
        if callable(get_decoder):
            candidates.insert(0, get_decoder())
        for candidate in candidates:
            if isinstance(candidate, nn.Module) and isinstance(
                getattr(candidate, "layers", None), nn.ModuleList
            ):
                return candidate
        raise ValueError(f"{type(model).__name__} has no decoder with a 'layers' ModuleList")

    def self_attention(self, model: nn.Module, layer: int) -> nn.Module:
        """The ``self_attn`` module of decoder layer ``layer``."""
        layers = self.decoder(model).layers
        assert isinstance(layers, nn.ModuleList)
        attention = getattr(layers[layer], "self_attn", None)
        if not isinstance(attention, nn.Module):
            raise ValueError(f"decoder layer {layer} has no 'self_attn' module")
        return attention

    def geometry(self, model: nn.Module) -> AttentionGeometry:
        config = text_config(model)
        num_heads = int(config.num_attention_heads)
        num_kv_heads = int(getattr(config, "num_key_value_heads", None) or num_heads)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        layers = self.decoder(model).layers
        assert isinstance(layers, nn.ModuleList)
        return AttentionGeometry(
            num_layers=len(layers),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=int(head_dim),
        )

    def sources(self, attention: nn.Module) -> dict[str, tuple[nn.Module, HeadLayout]]:
        """Role ("query", "key", "value") -> (module, output layout) inside ``attention``."""
        names = {
            "query": (self.query_module, self.query_layout),
            "key": (self.key_module, self.key_layout),
            "value": (self.value_module, self.value_layout),
        }
        found: dict[str, tuple[nn.Module, HeadLayout]] = {}
        for role, (name, layout) in names.items():
            module = getattr(attention, name, None)
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f"{type(attention).__name__} has no '{name}' submodule; the {self.name} "
                    f"adapter does not fit this model"
                )
            found[role] = (module, layout)
        return found


def text_config(model: nn.Module) -> Any:
    """The decoder's config (``get_text_config()`` for multimodal wrappers)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no transformers config")
    get_text_config = getattr(config, "get_text_config", None)
    return get_text_config() if callable(get_text_config) else config


LLAMA_LIKE = AttentionAdapter(name="llama-like", model_types=("llama", "qwen2", "gemma", "gemma2"))
QWEN3 = AttentionAdapter(
    name="qwen3",
    model_types=("qwen3",),
    query_module="q_norm",
    query_layout=HeadLayout.TOKEN_MAJOR,
    key_module="k_norm",
    key_layout=HeadLayout.TOKEN_MAJOR,
)
GEMMA3 = AttentionAdapter(
    name="gemma3",
    model_types=("gemma3_text",),
    query_module="q_norm",
    query_layout=HeadLayout.HEAD_MAJOR,
    key_module="k_norm",
    key_layout=HeadLayout.HEAD_MAJOR,
    # Gemma3 has one rotary embedding per layer type (local/global), called with layer_type.
    supports_concat=False,
)

_ADAPTERS: dict[str, AttentionAdapter] = {}


def register_adapter(adapter: AttentionAdapter, *, replace: bool = False) -> None:
    """Make ``adapter`` serve its ``model_types``; ``replace`` allows overriding a family."""
    taken = [t for t in adapter.model_types if t in _ADAPTERS and _ADAPTERS[t] is not adapter]
    if taken and not replace:
        raise ValueError(f"model types {taken} already have an adapter (pass replace=True)")
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


for _adapter in (LLAMA_LIKE, QWEN3, GEMMA3):
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(model: nn.Module) -> AttentionAdapter:
    """The adapter registered for ``model.config.model_type``; ValueError if none is."""
    model_type = getattr(text_config(model), "model_type", None)
    adapter = _ADAPTERS.get(str(model_type))
    if adapter is None:
        raise ValueError(
            f"unsupported model family {model_type!r} ({type(model).__name__}); supported "
            f"model types: {supported_model_types()} (register_adapter() adds one)"
        )
    return adapter


# --------------------------------------------------------------------------- forward detection


@dataclass(frozen=True)
class ForwardInfo:
    """What a decoder forward is about to process."""

    batch_size: int
    seq_len: int
    start_position: int  # absolute position of its first token (tokens already in the cache)


def describe_forward(
    decoder: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ForwardInfo:
    """Read batch, length and start position from a decoder forward call's arguments.

    The start position is ``cache_position[0]`` when given (older transformers), else the
    length of the KV ``cache`` (``get_seq_length()``), else 0. Explicit ``position_ids``
    without a cache are not taken as an offset.
    """
    try:
        bound = inspect.signature(decoder.forward).bind_partial(*args, **kwargs).arguments
    except TypeError:
        bound = dict(kwargs)
    extra = bound.get("kwargs")
    if isinstance(extra, dict):
        bound = {**bound, **extra}
    tokens = bound.get("input_ids")
    if tokens is None:
        tokens = bound.get("inputs_embeds")
    if not isinstance(tokens, Tensor) or tokens.dim() < 2:
        raise ValueError("decoder forward got neither input_ids nor inputs_embeds of shape (B, T)")
    cache_position = bound.get("cache_position")
    past = bound.get("cache")
    if isinstance(cache_position, Tensor) and cache_position.numel() > 0:
        start = int(cache_position.reshape(-1)[0])
    elif past is not None and hasattr(past, "get_seq_length"):
        start = int(past.get_seq_length())
    else:
        start = 0
    return ForwardInfo(batch_size=tokens.shape[0], seq_len=tokens.shape[1], start_position=start)


class DecoderForwardWatch:
    """Calls ``on_start(ForwardInfo)`` before and ``on_end(succeeded)`` after every decoder
    forward.

    ``on_end`` also runs when the forward raises (``always_call``; torch then passes no output,
    so ``succeeded`` is False), so state armed by ``on_start`` never leaks into the next forward.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: AttentionAdapter,
        on_start: Callable[[ForwardInfo], None],
        on_end: Callable[[bool], None],
    ) -> None:
        decoder = adapter.decoder(model)

        def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            on_start(describe_forward(module, args, kwargs))

        def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            on_end(output is not None)

        self._handles: list[RemovableHandle] = [
            decoder.register_forward_pre_hook(pre_hook, with_kwargs=True),
            decoder.register_forward_hook(post_hook, always_call=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


# --------------------------------------------------------------------------- prefix K/V tap


PrefixKVCallback = Callable[[int, Tensor | None, Tensor, Tensor], tuple[Tensor, Tensor] | None]
"""``(layer, query, key, value) -> (new_key, new_value) | None``.

query: (B, H_q, S, D) pre-RoPE queries or None when not captured; key, value: (B, H, S, D)
pre-RoPE prefix keys/values (fresh copies, safe to keep). Return same-shaped replacements for
the prefix tokens, or None to leave them unchanged.
"""


@dataclass
class _LayerCapture:
    """The hooked outputs of one attention forward, filled as its hooks run."""

    outputs: dict[str, Tensor] = field(default_factory=dict)


class PrefixKVTap:
    """Hooks on the chosen layers that read and may replace the first S tokens' K/V.

    Passive until armed: while ``prefix_len`` is None every hook returns at once and the model
    computes exactly what it would without hooks. While armed with S, each chosen layer's
    attention forward calls ``callback`` once with its prefix Q/K/V and writes the returned
    K/V over the first S tokens, before RoPE.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: AttentionAdapter,
        layers: Iterable[int],
        callback: PrefixKVCallback,
        capture_query: bool = False,
    ) -> None:
        self.prefix_len: int | None = None
        self._callback = callback
        self._geometry = adapter.geometry(model)
        self._captures: dict[int, _LayerCapture] = {}
        self._layouts: dict[tuple[int, str], HeadLayout] = {}
        self._handles: list[RemovableHandle] = []
        roles = ("query", "key", "value") if capture_query else ("key", "value")
        try:
            for layer in layers:
                sources = adapter.sources(adapter.self_attention(model, layer))
                for role in roles:
                    module, layout = sources[role]
                    hook = self._make_hook(layer, role, layout, roles)
                    self._handles.append(module.register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captures.clear()
        self.prefix_len = None

    @property
    def num_hooks(self) -> int:
        return len(self._handles)

    def _make_hook(
        self, layer: int, role: str, layout: HeadLayout, roles: Sequence[str]
    ) -> Callable[[nn.Module, Any, Tensor], Tensor | None]:
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
            if self.prefix_len is None:
                return None
            # A private copy: the in-place prefix write below must not reach a tensor that
            # anything else (another hook, the caller) may hold.
            owned = output.clone()
            capture = self._captures.setdefault(layer, _LayerCapture())
            capture.outputs[role] = owned
            if all(r in capture.outputs for r in roles):
                del self._captures[layer]
                self._replace_prefix(layer, capture, self.prefix_len)
            return owned

        self._layouts[(layer, role)] = layout
        return hook

    def _replace_prefix(self, layer: int, capture: _LayerCapture, prefix_len: int) -> None:
        head_dim = self._geometry.head_dim
        views = {
            role: as_heads(tensor, self._layouts[(layer, role)], head_dim)
            for role, tensor in capture.outputs.items()
        }
        query = views.get("query")
        prefix_query = None if query is None else query[:, :, :prefix_len].clone()
        prefix_key = views["key"][:, :, :prefix_len].clone()
        prefix_value = views["value"][:, :, :prefix_len].clone()
        replacement = self._callback(layer, prefix_query, prefix_key, prefix_value)
        if replacement is None:
            return
        new_key, new_value = replacement
        views["key"][:, :, :prefix_len] = new_key
        views["value"][:, :, :prefix_len] = new_value


# --------------------------------------------------------------------------- concat ablation


HistoryProvider = Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor] | None]
"""``layer -> (k_hist, v_hist, hist_valid, positions)`` or None for no history.

k_hist, v_hist: (B, H, L, D) pre-RoPE; hist_valid: (B, L) bool; positions: (L,) long, the
position each history token had in its own frame (RoPE is applied at those positions).
"""


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding of ``x`` (..., T, D) with tables ``cos``/``sin`` (T, D)."""
    return x * cos + rotate_half(x) * sin


class _HistoryPrependingCache:
    """Stand-in for the KV ``cache`` inside one attention forward: ``update()`` lets the real
    cache (if any) store only the current tokens, then prepends the history to what the
    attention reads."""

    def __init__(self, inner: Any, keys: Tensor, values: Tensor) -> None:
        self._inner = inner
        self._keys = keys
        self._values = values

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        if self._inner is not None:
            key_states, value_states = self._inner.update(
                key_states, value_states, layer_idx, *args, **kwargs
            )
        keys = torch.cat([self._keys.to(key_states.dtype), key_states], dim=2)
        values = torch.cat([self._values.to(value_states.dtype), value_states], dim=2)
        return keys, values

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


def _widen_mask(
    mask: Tensor | None,
    hist_valid: Tensor,
    query_len: int,
    additive_dtype: torch.dtype | None,
) -> Tensor:
    """Attention mask (B, 1, T, L + T): history columns (valid ones visible to every query)
    followed by the current forward's causal mask.

    ``mask`` is what the decoder gave this layer for a forward starting at position 0: None
    (SDPA's implicit causal mask), a boolean "may attend" mask or an additive float mask
    (B or 1, 1, T, T). ``additive_dtype`` builds an additive mask when ``mask`` is None.
    """
    batch, hist_len = hist_valid.shape
    device = hist_valid.device
    history = hist_valid[:, None, None, :].expand(batch, 1, query_len, hist_len)
    if mask is None:
        causal = torch.ones(query_len, query_len, dtype=torch.bool, device=device).tril()
        current: Tensor = causal[None, None].expand(batch, 1, query_len, query_len)
        if additive_dtype is None:
            return torch.cat([history, current], dim=-1)
        mask = torch.zeros(current.shape, dtype=additive_dtype, device=device).masked_fill(
            ~current, torch.finfo(additive_dtype).min
        )
    current = mask[..., -query_len:].expand(batch, 1, query_len, query_len)
    if mask.dtype == torch.bool:
        return torch.cat([history, current], dim=-1)
    blocked = torch.finfo(mask.dtype).min
    history_additive = torch.zeros(history.shape, dtype=mask.dtype, device=device)
    history_additive = history_additive.masked_fill(~history, blocked)
    return torch.cat([history_additive, current], dim=-1)


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


class ConcatHistoryWrap:
    """The concat ablation: at the chosen layers, while ``armed``, the attention also attends
    to the stored history tokens (prepended to its keys/values, visible to every query).

    Wraps each chosen ``self_attn`` instance's ``forward`` (not its class); ``remove()``
    restores the previous instance state exactly. History keys get RoPE at their in-frame
    positions; the real KV cache receives only the current tokens, so later cached decoding
    steps do not see the history. Supports the eager and SDPA attention implementations.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: AttentionAdapter,
        layers: Iterable[int],
        history: HistoryProvider,
    ) -> None:
        if not adapter.supports_concat:
            raise ValueError(f"loading='concat' is not supported for the {adapter.name} family")
        implementation = getattr(text_config(model), "_attn_implementation", None) or "eager"
        if implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"loading='concat' needs attn_implementation 'eager' or 'sdpa', "
                f"got {implementation!r}"
            )
        rotary = getattr(adapter.decoder(model), "rotary_emb", None)
        if not isinstance(rotary, nn.Module):
            raise ValueError("loading='concat' needs the decoder's 'rotary_emb' module")
        self.armed = False
        self._rotary = rotary
        self._history = history
        self._additive = implementation == "eager"
        self._patches = InstanceForwardPatches()
        try:
            for layer in layers:
                attention = adapter.self_attention(model, layer)
                self._patches.install(attention, self._wrap(layer, attention.forward))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        self._patches.restore()
        self.armed = False

    def _wrap(self, layer: int, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return original(*args, **kwargs)
            history = self._history(layer)
            if history is None:
                return original(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            arguments = bound.arguments
            hidden_states: Tensor = arguments["hidden_states"]
            k_hist, v_hist, hist_valid, positions = history
            cos, sin = self._rotary(v_hist, positions[None, :].to(v_hist.device))
            cos, sin = cos[:, None], sin[:, None]  # (1, 1, L, D)
            k_hist_rope = apply_rope(k_hist, cos, sin)
            arguments["attention_mask"] = _widen_mask(
                arguments.get("attention_mask"),
                hist_valid,
                hidden_states.shape[1],
                hidden_states.dtype if self._additive else None,
            )
            arguments["cache"] = _HistoryPrependingCache(
                arguments.get("cache"), k_hist_rope, v_hist
            )
            return original(*bound.args, **bound.kwargs)

        return forward
