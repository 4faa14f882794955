"""The prefix K/V tap: read, and optionally replace, the first S tokens' pre-RoPE K/V.

A forward hook on each source module of a chosen layer (see ``policies.attention_adapters``)
returns a private copy of the module's output and, once the last of that layer's hooks has run,
overwrites the prefix tokens of those copies in place: the attention forward sees the new K/V
when it applies RoPE, whichever order the projections ran in. Hooks only, kept in a handle list
and undone by ``remove()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from policies.attention_adapters import AttentionAdapter, HeadLayout, as_heads

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
