"""Model adapters: where each transformers decoder family keeps its pre-RoPE Q/K/V.

In every supported family the attention forward computes, in this order (verified against
transformers 5.24 ``modeling_*.py``)::

    llama, qwen2, gemma, gemma2:  q_proj -> k_proj -> v_proj          -> RoPE -> cache -> attn
    qwen3:                        q_proj -> q_norm -> k_proj -> k_norm -> v_proj -> RoPE -> ...
    gemma3:                       q_proj -> k_proj -> v_proj -> q_norm -> k_norm -> RoPE -> ...

and reads the projections only through ``.view()``/``.transpose()``, which share storage with
the module output. An :class:`AttentionAdapter` per family names the modules that produce the
final pre-RoPE queries, keys and values (the "sources": ``k_norm`` when present, else
``k_proj``, and so on) and their output layout; a registry keyed by ``config.model_type`` picks
it (cf. vLLM's attention-backend registry).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn


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


def _with_qk_norm(
    name: str, model_types: tuple[str, ...], layout: HeadLayout, supports_concat: bool = True
) -> AttentionAdapter:
    """A family whose pre-RoPE queries and keys are the outputs of per-head norms
    (``q_norm``/``k_norm``) laid out as ``layout``; values come straight from ``v_proj``."""
    return AttentionAdapter(
        name=name,
        model_types=model_types,
        query_module="q_norm",
        query_layout=layout,
        key_module="k_norm",
        key_layout=layout,
        supports_concat=supports_concat,
    )


QWEN3 = _with_qk_norm("qwen3", ("qwen3",), HeadLayout.TOKEN_MAJOR)
# Gemma3 has one rotary embedding per layer type (local/global), called with layer_type.
GEMMA3 = _with_qk_norm("gemma3", ("gemma3_text",), HeadLayout.HEAD_MAJOR, supports_concat=False)

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
