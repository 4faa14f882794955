"""Forward detection: what each decoder forward is about to process, told before and after it.

A forward pre-hook (with kwargs) on the decoder module that owns the layers (``LlamaModel``
etc.; hooking the decoder rather than the causal-LM head also catches direct
``model.model(...)`` calls) reads batch size, length and start position from the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from policies.attention_adapters import AttentionAdapter


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
