"""Boundary refinement (EM-LLM): vectorised prefix-sum version vs the explicit-sum loop.

One 512-token chunk whose keys come from ~31 events (a cluster centre per event plus noise),
cosine key similarity, the true boundaries shifted by up to 3 tokens; both implementations
refine the same input and must agree. Timed on one torch thread: one chunk is a small job, and
on a shared machine OpenMP threads mostly wait on each other, which says nothing about either
implementation. Target: vectorised at least 50x faster.

Two measurements, both medians of repeats: each implementation timed on its own
(``median_time``, back-to-back calls), and the two interleaved (``compare``, paired ratio).
On a loaded shared CPU a sub-millisecond call that follows any ~17 ms pause (even
``time.sleep``) runs about 2x slower than back-to-back, so the interleaved ratio understates
the speed-up; the target is judged on the back-to-back medians and both are reported.
"""

from __future__ import annotations

import torch

from benchmarks.timing import compare, fmt_ms, median_time
from memory.episodic.refinement import (
    Metric,
    key_similarity,
    refine_boundaries,
    refine_boundaries_loop,
)

CHUNK_TOKENS = 512
BOUNDARIES = 30
HEADS, HEAD_DIM = 3, 64
TARGET_SPEEDUP = 50.0
METRICS: tuple[Metric, ...] = ("modularity", "conductance")


def make_chunk(seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Similarity (T, T) of a chunk with BOUNDARIES true boundaries, and misplaced boundaries."""
    gen = torch.Generator().manual_seed(seed)
    step = CHUNK_TOKENS // (BOUNDARIES + 1)
    true = [step * (i + 1) for i in range(BOUNDARIES)]
    event_of_token = torch.bucketize(torch.arange(CHUNK_TOKENS), torch.tensor(true), right=True)
    centres = torch.randn(BOUNDARIES + 1, HEADS, HEAD_DIM, generator=gen)
    noise = torch.randn(CHUNK_TOKENS, HEADS, HEAD_DIM, generator=gen)
    keys = (centres[event_of_token] + 0.8 * noise).transpose(0, 1)
    shifts = torch.randint(-3, 4, (BOUNDARIES,), generator=gen).tolist()
    return key_similarity(keys), [b + s for b, s in zip(true, shifts, strict=True)]


def run(repeats: int = 21) -> str:
    similarity, boundaries = make_chunk()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for metric in METRICS:
            ours = refine_boundaries(similarity, boundaries, metric)
            if ours != refine_boundaries_loop(similarity, boundaries, metric):
                raise AssertionError(f"{metric}: vectorised and loop refinements disagree")

            def vectorised(m: Metric = metric) -> list[int]:
                return refine_boundaries(similarity, boundaries, m)

            def loop(m: Metric = metric) -> list[int]:
                return refine_boundaries_loop(similarity, boundaries, m)

            alone = (median_time(vectorised, repeats=5 * repeats), median_time(loop, repeats))
            rows.append((metric, alone, compare(vectorised, loop, repeats=repeats)))
    finally:
        torch.set_num_threads(threads)
    lines = [
        f"One chunk of {CHUNK_TOKENS} tokens, {BOUNDARIES} boundaries, min_size=1, no window, "
        "1 torch thread. Medians of repeats.",
        "",
        "| metric | vectorised (ms) | loop (ms) | speed-up, back-to-back | speed-up, interleaved "
        "(paired) | target |",
        "|---|---|---|---|---|---|",
    ]
    for metric, (fast_s, slow_s), cmp in rows:
        speedup = slow_s / fast_s
        verdict = "met" if speedup >= TARGET_SPEEDUP else "MISSED"
        lines.append(
            f"| {metric} | {fmt_ms(fast_s)} | {fmt_ms(slow_s)} | {speedup:.0f}x | "
            f"{1.0 / cmp.paired_ratio:.0f}x | >= {TARGET_SPEEDUP:.0f}x: {verdict} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
