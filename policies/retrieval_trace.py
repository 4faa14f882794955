"""Which stored frames TempoFit's retrieval looked at, step by step (for plots and reports).

``FrameRetrievalTrace(tf)`` observes every residual loading of a ``TempoFit`` and recomputes
the FGTB weights ``W = softmax(K_t K_hist^T / sqrt(d) + B)`` over the frames in memory at that
layer (the same ``kernels.fgtb_scores`` the kernels use). ``pop()`` returns, for the step that
just ran, the weight mass each stored frame received, averaged over layers, heads and query
tokens: ``{frame_time: mass}``, masses summing to 1 (empty when the memory was empty).

Tracing costs a copy of the history and one extra score pass per layer; ``elapsed_s`` says how
much, so that callers can keep it out of latency measurements.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

import kernels
from policies.tempofit import LoadEvent, TempoFit


class FrameRetrievalTrace:
    """Per-step retrieval mass per stored frame of one ``TempoFit`` (batch row 0)."""

    def __init__(self, tempofit: TempoFit) -> None:
        self.tempofit = tempofit
        self.elapsed_s = 0.0
        self._per_layer: dict[int, dict[float, float]] = {}
        tempofit.load_observers.append(self)

    def __call__(self, event: LoadEvent) -> None:
        start = time.perf_counter()
        memory = self.tempofit.memory
        num_frames = memory.num_frames(event.layer)
        if num_frames == 0:
            return
        k_hist, _v, hist_time, hist_valid = memory.history(event.layer)
        bias_scale = self.tempofit.config.bias_scale(event.query.shape[2])
        metadata = kernels.FGTBMetadata.with_alibi_slopes(
            hist_time, hist_valid, event.time, bias_scale, num_heads=event.query.shape[1]
        )
        scores = kernels.fgtb_scores(event.query, k_hist, metadata)
        weights = torch.softmax(scores, dim=-1)[0].mean(dim=(0, 1))  # (L,)
        per_frame = weights.reshape(num_frames, -1).sum(-1)
        frame_times = hist_time[0].reshape(num_frames, -1)[:, 0]
        self._per_layer[event.layer] = {
            float(t): float(m) for t, m in zip(frame_times, per_frame, strict=True)
        }
        self.elapsed_s += time.perf_counter() - start

    def pop(self) -> dict[float, float]:
        """``{frame_time: mass}`` of the last step, averaged over layers; then cleared."""
        layers = list(self._per_layer.values())
        self._per_layer = {}
        if not layers:
            return {}
        total: dict[float, float] = defaultdict(float)
        for masses in layers:
            for frame_time, mass in masses.items():
                total[frame_time] += mass / len(layers)
        return dict(total)

    def detach(self) -> None:
        """Stop observing."""
        if self in self.tempofit.load_observers:
            self.tempofit.load_observers.remove(self)
