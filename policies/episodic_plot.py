"""Plot of an ``EpisodicLM`` stream: surprise, event boundaries and what one query retrieved.

Top panel: per-token surprise (N,), the surprise boundaries before refinement (dashed) and after
(solid), the sinks, and the chosen query's local window and chunk. Bottom panel: for that query,
which stream tokens each layer retrieved (layers x tokens, dark = attended through memory).
Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from policies.episodic_lm import EpisodicLM


def plot_events(
    lm: EpisodicLM,
    path: str | os.PathLike[str],
    record: int = -1,
    title: str | None = None,
) -> Path:
    """Draw ``lm``'s trace and save it as a PNG at ``path``; returns the path.

    ``record``: index into ``lm.retrievals`` of the query chunk (or generation step) whose
    retrieved events are shown (default: the last one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    surprise = lm.surprise
    if surprise.numel() == 0 or not lm.retrievals:
        raise ValueError("nothing to plot: feed or generate with this EpisodicLM first")
    if not -len(lm.retrievals) <= record < len(lm.retrievals):
        raise ValueError(f"record must index lm.retrievals ({len(lm.retrievals)} entries)")
    query = lm.retrievals[record]
    spans = {event_id: (start, end) for event_id, start, end in lm.events()}
    layers = lm.geometry.num_layers
    retrieved = torch.zeros(layers, surprise.numel())  # (layers, N): 1 where attended via memory
    for layer, ids in query.events.items():
        for event_id in ids:
            if event_id in spans:
                start, end = spans[event_id]
                retrieved[layer, start:end] = 1.0

    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    steps = torch.arange(surprise.numel())
    top.plot(steps, surprise, lw=0.7, color="black", label="surprise -log p(x_t | x_<t)")
    for boundary in lm.boundaries_before:
        top.axvline(boundary, color="tab:blue", ls="--", lw=0.6, alpha=0.6)
    for boundary in lm.boundaries_after:
        top.axvline(boundary, color="tab:red", lw=0.8, alpha=0.8)
    top.axvspan(0, query.n_sinks, color="tab:green", alpha=0.15, label="sinks")
    top.axvspan(query.local_start, query.start, color="tab:orange", alpha=0.15, label="local")
    top.axvspan(query.start, query.end, color="tab:purple", alpha=0.3, label="query chunk")
    top.plot([], [], color="tab:blue", ls="--", label="boundary (surprise)")
    top.plot([], [], color="tab:red", label="boundary (refined)")
    top.set_ylabel("surprise (nats)")
    top.legend(loc="upper right", fontsize=7, ncol=3)
    top.set_title(
        title or f"EpisodicLM: {len(spans)} events, query tokens {query.start}-{query.end}"
    )
    bottom.imshow(
        retrieved.numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap="Greys",
        extent=(0, surprise.numel(), layers - 0.5, -0.5),
    )
    bottom.set_ylabel("layer")
    bottom.set_xlabel("stream token")
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
