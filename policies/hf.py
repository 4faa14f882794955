"""Re-exports of the transformers retrofitting pieces under their former module name.

Each job now has its own module; import from there in new code:

- ``policies.attention_adapters``: which modules of each model family hold the pre-RoPE Q/K/V
  (``AttentionAdapter``, ``adapter_for``, ``register_adapter``, ``HeadLayout``, ...);
- ``policies.forward_watch``: what each decoder forward is about to process
  (``DecoderForwardWatch``, ``describe_forward``, ``ForwardInfo``);
- ``policies.prefix_kv_tap``: read and replace the prefix tokens' pre-RoPE K/V (``PrefixKVTap``);
- ``policies.concat_history``: the concat ablation (``ConcatHistoryWrap``);
- ``policies.rope``: ``rotate_half``, ``apply_rope``;
- ``policies.instance_patches``: reversible per-instance ``forward`` patches
  (``InstanceForwardPatches``).
"""

from __future__ import annotations

from policies.attention_adapters import (
    GEMMA3,
    LLAMA_LIKE,
    QWEN3,
    AttentionAdapter,
    AttentionGeometry,
    HeadLayout,
    adapter_for,
    as_heads,
    register_adapter,
    supported_model_types,
    text_config,
)
from policies.concat_history import ConcatHistoryWrap, HistoryProvider
from policies.forward_watch import DecoderForwardWatch, ForwardInfo, describe_forward
from policies.instance_patches import InstanceForwardPatches
from policies.prefix_kv_tap import PrefixKVCallback, PrefixKVTap
from policies.rope import apply_rope, rotate_half

__all__ = [
    "GEMMA3",
    "LLAMA_LIKE",
    "QWEN3",
    "AttentionAdapter",
    "AttentionGeometry",
    "ConcatHistoryWrap",
    "DecoderForwardWatch",
    "ForwardInfo",
    "HeadLayout",
    "HistoryProvider",
    "InstanceForwardPatches",
    "PrefixKVCallback",
    "PrefixKVTap",
    "adapter_for",
    "apply_rope",
    "as_heads",
    "describe_forward",
    "register_adapter",
    "rotate_half",
    "supported_model_types",
    "text_config",
]
