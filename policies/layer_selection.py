"""Which decoder layers get a temporal KV memory.

The TempoFit paper's ablation (pi0.5, LIBERO-Long) found a few early-to-middle layers clearly
better than all layers (96.6 % vs 74 %): early-middle keys still carry token identity, so K-to-K
retrieval finds the matching tokens of past frames, and the loaded context has the rest of the
network to be integrated by. :func:`default_layers` encodes that prior; :func:`calibrate_layers`
measures it on sample frames of the model at hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import kernels
from memory import TempoFitConfig
from memory.numbers import is_int

# The early-to-middle band, as fractions of the depth.
_BAND_START = 0.2
_BAND_END = 0.5


def default_layers(num_layers: int, k: int = 4) -> list[int]:
    """``k`` layers spread evenly over the early-to-middle band of a ``num_layers`` model.

    Rule: the band is layers ``round(0.2 * L)`` .. ``ceil(0.5 * L) - 1`` (skipping the first
    fifth, whose keys are barely contextual, and stopping at the middle); ``k`` indices are
    spread evenly over it (``round(linspace)``). If the band holds fewer than ``k`` layers it
    grows toward later layers (earlier ones only once the last layer is reached). E.g. L = 30,
    k = 4 -> [6, 9, 11, 14]; L = 6, k = 4 -> [1, 2, 3, 4]; L = 4, k = 2 -> [1, 2].
    """
    if not is_int(num_layers) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if not is_int(k) or not 1 <= k <= num_layers:
        raise ValueError(f"k must be an int in 1..num_layers={num_layers}, got {k!r}")
    start = min(round(_BAND_START * num_layers), num_layers - 1)
    end = max(start, math.ceil(_BAND_END * num_layers) - 1)
    while end - start + 1 < k:
        if end < num_layers - 1:
            end += 1
        else:
            start -= 1
    if k == 1:
        return [start]
    step = (end - start) / (k - 1)
    return sorted({start + round(i * step) for i in range(k)})


@dataclass(frozen=True)
class LayerScore:
    """How one candidate layer did in :func:`calibrate_layers`.

    concentration: mean over heads, prefix tokens and frames of ``1 - H(W) / log(n)``, where W
        is the FGTB retrieval distribution over the n valid history tokens (1 = each token
        retrieves one history token, 0 = a uniform blur of the history).
    influence: mean KL(p_without_memory || p_with_memory) in nats of the next-token
        distribution at the last position of each frame after the first.
    score: ``concentration * influence / (influence + influence_scale)``.
    """

    layer: int
    score: float
    concentration: float
    influence: float


@dataclass(frozen=True)
class LayerCalibration:
    """Result of :func:`calibrate_layers`: ``ranking`` best first, ``layers`` the top k
    (ascending, ready for ``TempoFitConfig(layers=...)``)."""

    layers: list[int]
    ranking: list[LayerScore]


def _retrieval_concentration(
    query: Tensor,
    k_hist: Tensor,
    hist_time: Tensor,
    hist_valid: Tensor,
    time: float | Tensor,
    bias_scale: float,
) -> float:
    """Mean ``1 - H(W)/log(n)`` of the FGTB weights of ``query`` (B, H, S, D) over
    ``k_hist`` (B, H, L, D) with times (B, L) and validity (B, L); same formula as the kernel."""
    metadata = kernels.FGTBMetadata.with_alibi_slopes(
        hist_time, hist_valid, time, bias_scale, num_heads=query.shape[1]
    )
    scores = kernels.fgtb_scores(query, k_hist, metadata)
    valid = hist_valid[:, None, None, :]
    log_weights = torch.log_softmax(scores, dim=-1)
    weights = log_weights.exp()
    entropy = -(weights * log_weights.masked_fill(~valid, 0.0)).sum(-1)  # (B, H, S)
    valid_count = hist_valid.sum(-1).clamp_min(2).float()  # (B,)
    normalised = entropy / valid_count.log()[:, None, None]
    return float((1.0 - normalised).mean())


def _last_log_probs(output: Any) -> Tensor:
    logits = output.logits if hasattr(output, "logits") else output[0]
    return torch.log_softmax(logits[:, -1].float(), dim=-1)


@torch.no_grad()
def calibrate_layers(
    model: nn.Module,
    frames: Sequence[Tensor],
    candidates: Sequence[int] | None = None,
    k: int = 4,
    prefix_len: int | None = None,
    influence_scale: float = 0.01,
    **config_overrides: Any,
) -> LayerCalibration:
    """Rank candidate layers by how selective and how influential memory is there.

    Each candidate layer gets its own TempoFit (that layer only, otherwise
    ``TempoFitConfig(**config_overrides)``); the frames run in order as consecutive steps,
    and the score rewards layers where retrieval is concentrated (the current keys find
    specific past tokens, not a blur) and loading changes the model's next-token prediction:
    ``score = concentration * influence / (influence + influence_scale)``, so a layer whose
    memory has no effect scores ~0 and past ``influence_scale`` nats the concentration
    decides. See :class:`LayerScore` for the exact measures.

    Args:
        model: a supported frozen causal LM (needs ``.logits`` or a tuple whose first item is
            the logits).
        frames: at least 2 input_ids tensors (B, T_i), consecutive frames of one episode
            (batch row = session).
        candidates: layers to score (default: all).
        k: how many layers to return in ``layers``.
        prefix_len: prefix tokens per frame (default: the whole frame).
        influence_scale: nats of KL at which influence counts half (default 0.01).

    Returns:
        LayerCalibration with the top-k layers and the full ranking, best first.
    """
    from policies.hf import adapter_for
    from policies.tempofit import LoadEvent, TempoFit

    if len(frames) < 2:
        raise ValueError(f"calibrate_layers needs at least 2 frames, got {len(frames)}")
    num_layers = adapter_for(model).geometry(model).num_layers
    layers = list(range(num_layers)) if candidates is None else list(candidates)
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if not layers or bad:
        raise ValueError(f"candidates must be layers in 0..{num_layers - 1}, got {layers}")
    if not 1 <= k <= len(layers):
        raise ValueError(f"k must be in 1..{len(layers)} (the number of candidates), got {k}")
    if influence_scale <= 0:
        raise ValueError(f"influence_scale must be > 0, got {influence_scale}")

    baseline = [_last_log_probs(model(input_ids=frame)) for frame in frames]
    ranking: list[LayerScore] = []
    for layer in layers:
        config = TempoFitConfig(layers=[layer], **config_overrides)
        tempofit = TempoFit(model, config, batch_size=frames[0].shape[0])
        concentrations: list[float] = []

        def observe(
            event: LoadEvent,
            tempofit: TempoFit = tempofit,
            concentrations: list[float] = concentrations,
        ) -> None:
            if tempofit.memory.num_frames(event.layer) == 0:
                return
            k_hist, _, hist_time, hist_valid = tempofit.memory.history(event.layer)
            bias_scale = tempofit.config.bias_scale(event.query.shape[2])
            concentrations.append(
                _retrieval_concentration(
                    event.query, k_hist, hist_time, hist_valid, event.time, bias_scale
                )
            )

        tempofit.load_observers.append(observe)
        divergences: list[float] = []
        try:
            for index, frame in enumerate(frames):
                length = frame.shape[1] if prefix_len is None else prefix_len
                with tempofit.step(prefix_len=length):
                    log_probs = _last_log_probs(model(input_ids=frame))
                if index > 0:
                    base = baseline[index]
                    kl = (base.exp() * (base - log_probs)).sum(-1).mean()
                    divergences.append(float(kl))
        finally:
            tempofit.remove()
        concentration = sum(concentrations) / max(len(concentrations), 1)
        influence = sum(divergences) / len(divergences)
        score = concentration * influence / (influence + influence_scale)
        ranking.append(LayerScore(layer, score, concentration, influence))
    ranking.sort(key=lambda entry: entry.score, reverse=True)
    return LayerCalibration(layers=sorted(e.layer for e in ranking[:k]), ranking=ranking)
