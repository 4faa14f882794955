"""The concat ablation: history tokens prepended to the keys/values at chosen layers.

Concat changes the sequence length, which projection hooks cannot do.
:class:`ConcatHistoryWrap` therefore wraps the chosen ``self_attn`` instances' ``forward`` (an
instance attribute, deleted again by ``remove()``): it passes the original forward a stand-in
KV cache whose ``update()`` prepends the RoPE'd history to the keys and values and an attention
mask widened to cover them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from policies.attention_adapters import AttentionAdapter, text_config
from policies.instance_patches import InstanceForwardPatches
from policies.rope import apply_rope

HistoryProvider = Callable[[int], tuple[Tensor, Tensor, Tensor, Tensor] | None]
"""``layer -> (k_hist, v_hist, hist_valid, positions)`` or None for no history.

k_hist, v_hist: (B, H, L, D) pre-RoPE; hist_valid: (B, L) bool; positions: (L,) long, the
position each history token had in its own frame (RoPE is applied at those positions).
"""


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
