"""Score candidate continuations (actions) of a prompt with a frozen causal LM.

``score_choices`` sums ``log p(choice tokens | prompt)`` per choice from the prompt's last
logits and its KV cache, so the prompt runs once however many choices there are (each choice
of more than one token continues a copy of the cache). When the prompt ran under a memory
(TempoFit), the cache holds the memory-loaded keys/values, so the scores see the memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


@torch.no_grad()
def score_choices(
    model: Any, last_logits: Tensor, cache: Any, choices: Sequence[Sequence[int]]
) -> list[float]:
    """``[sum log p(choice | prompt) for choice in choices]``.

    Args:
        model: the causal LM that produced ``cache``.
        last_logits: (V,) logits of the prompt's last token.
        cache: the prompt's KV cache (``output.cache``) (needed only for multi-token choices).
        choices: token id lists, each non-empty.
    """
    first_logp = torch.log_softmax(last_logits.float(), dim=-1)
    scores = []
    for choice in choices:
        if not choice:
            raise ValueError("every choice needs at least one token")
        score = float(first_logp[choice[0]])
        if len(choice) > 1:
            if cache is None:
                raise ValueError("multi-token choices need the prompt's KV cache")
            branch = copy.deepcopy(cache)
            ids = torch.tensor([list(choice[:-1])], dtype=torch.long, device=last_logits.device)
            logits = model(ids, cache=branch, use_cache=True).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            score += float(logp[torch.arange(len(choice) - 1), list(choice[1:])].sum())
        scores.append(score)
    return scores
