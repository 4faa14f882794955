"""TempoFit overhead on the real frozen models (SmolLM2-135M-Instruct and Gemma 3 270M, CPU).

One control step = one forward over a 256-token prefix + 16-token suffix. Measured side by side:
- step with TempoFit memory (4 layers, N frames held) / the plain forward, N = 4, 8, 16, 32 on
  SmolLM2 and N = 8, 32 on Gemma 3 (one KV head of dim 256, sliding-window layers)
  (targets <= 1.03 at N=8, <= 1.10 at N=32);
- memory added per frame (bytes);
- frame stacking, the baseline TempoFit replaces: one forward over the last N frames' prefixes
  concatenated + the suffix, / the plain forward (SmolLM2 only).

``run()`` is SmolLM2 (``make bench`` section ``tempofit``), ``run_gemma3()`` Gemma 3
(``tempofit-gemma3``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.timing import compare, fmt_ms, median_time
from memory import LayerwiseKVMemory, TempoFitConfig
from policies import TempoFit, default_layers, load_gemma3, load_smollm2

PREFIX = 256
SUFFIX = 16
FRAMES = (4, 8, 16, 32)
GEMMA3_FRAMES = (8, 32)
STACKING_FRAMES = (4, 8)  # a forward over 32 x 256 tokens takes tens of seconds on 2 cores
TARGETS = {8: 1.03, 32: 1.10}


TEMPOFIT_NOTE = (
    "Why the targets are not met here: at N=8 the retrieval is 4 layers x ~0.6 GFLOP "
    "(S x L score matrix and the W @ [K, V] product, 3 KV heads, d=64) = 2.4 GFLOP "
    "against a 73 GFLOP forward of "
    "this 135M model (LM head over all 272 positions included), and on 2 CPU cores both run at "
    "about the same FLOP rate: exact fp32 retrieval alone costs >= 3.3 %, the hooks and the push "
    "~1.1 %. The blocked kernel runs at the bare-matmul floor (5.7 ms vs 5.0 ms per layer at N=8). "
    "The paper's 1.045 (N=8) is for a ~3B VLA on a GPU, where the same retrieval is ~20x smaller "
    "relative to the forward. Frame stacking is the baseline TempoFit replaces."
)


GEMMA3_NOTE = (
    "On Gemma 3 a stored frame is 2 MiB at 4 layers (one KV head of dim 256 x 256 prefix "
    "tokens, K and V, fp32; SmolLM2: 1.5 MiB). Retrieval runs once per KV head: at N=8 it is "
    "~0.86 GFLOP per layer (272 x 2048 scores and the W @ [K, V] product at d=256) = 3.4 GFLOP "
    "against a ~54 GFLOP forward of the ~100M non-embedding parameters, about twice SmolLM2's "
    "relative cost, so the same exact fp32 retrieval on 2 CPU cores cannot reach 1.03 here "
    "either. The measured overhead is larger than that FLOP share (about 6 % at N=8): the "
    "retrieval, the rescaled load and the push of a 2 MiB frame over one wide KV head run at a "
    "lower FLOP rate than the forward's large matmuls, and they grow with N while the forward "
    "does not. The plain step keeps the logits of the 16 suffix positions only "
    "(`logits_to_keep`): Gemma's 262k-token LM head over all 272 positions would add ~91 "
    "GFLOP that no policy needs and would hide TempoFit's cost."
)


def _frame_nbytes(memory: LayerwiseKVMemory) -> int:
    """Bytes one stored frame adds: K and V slots of every memory layer."""
    itemsize = torch.empty((), dtype=memory.dtype).element_size()
    slot_elements = memory.batch_size * memory.num_kv_heads * memory.head_dim
    return sum(2 * slot_elements * memory.slot_len(layer) * itemsize for layer in memory.layers)


@dataclass
class _Measured:
    """Table rows of one model, and what the frame-stacking rows reuse."""

    rows: list[str]
    layers: list[int]
    plain: Callable[[], None]
    frames: list[torch.Tensor]
    current: torch.Tensor


def _ratio_rows(
    model: Any, counts: tuple[int, ...], repeats: int, logits_to_keep: int = 0
) -> _Measured:
    """One table row per N in ``counts``: TempoFit step / plain step on ``model``, logits of
    the last ``logits_to_keep`` positions (0: all)."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    frames = [
        torch.randint(0, vocab, (1, PREFIX + SUFFIX), generator=generator)
        for _ in range(max(counts) + 1)
    ]
    current = frames[-1]
    layers = default_layers(model.config.num_hidden_layers, k=4)

    def plain() -> None:
        with torch.inference_mode():
            model(current, logits_to_keep=logits_to_keep)

    rows = []
    for n in counts:
        tf = TempoFit(model, TempoFitConfig(layers=layers, capacity=n))
        with torch.inference_mode():
            for frame in frames[:n]:  # fill the FIFO so retrieval sees N frames
                with tf.step(prefix_len=PREFIX):
                    model(frame, logits_to_keep=logits_to_keep)
        step_t = [float(n)]

        def with_memory(tf: TempoFit = tf, step_t: list[float] = step_t) -> None:
            # same frame each round; time advances so the FIFO keeps N frames
            step_t[0] += 1
            with torch.inference_mode(), tf.step(prefix_len=PREFIX, t=step_t[0]):
                model(current, logits_to_keep=logits_to_keep)

        cmp = compare(with_memory, plain, repeats=repeats)
        per_frame = _frame_nbytes(tf.memory)
        tf.remove()
        target = TARGETS.get(n)
        verdict = (
            ""
            if target is None
            else (f"<= {target} ({'met' if cmp.paired_ratio <= target else 'MISSED'})")
        )
        rows.append(
            f"| {n} | {fmt_ms(cmp.ours_s)} | {fmt_ms(cmp.baseline_s)} | "
            f"{cmp.paired_ratio:.3f} | {per_frame / 1024:.0f} KiB | {verdict} |"
        )
    return _Measured(rows, layers, plain, frames, current)


def _ratio_table(caption: str, rows: list[str]) -> list[str]:
    return [
        caption,
        "",
        "| frames N | step with memory (ms) | plain step (ms) | ratio (paired median) "
        "| memory per frame | target |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def run(repeats: int = 15) -> str:
    """SmolLM2: the step-time ratios, memory per frame, and frame stacking beside them."""
    torch.manual_seed(0)
    model, _ = load_smollm2()
    measured = _ratio_rows(model, FRAMES, repeats)
    plain, frames, current = measured.plain, measured.frames, measured.current

    stacking_rows = []
    base = median_time(plain, repeats=5, warmup=1)
    for n in STACKING_FRAMES:
        stacked = torch.cat([f[:, :PREFIX] for f in frames[-n - 1 : -1]] + [current], dim=1)

        def stack(stacked: torch.Tensor = stacked) -> None:
            with torch.inference_mode():
                model(stacked)

        t = median_time(stack, repeats=3, warmup=1)
        stacking_rows.append(f"| {n} | {stacked.shape[1]} | {fmt_ms(t)} | {t / base:.2f} |")

    caption = (
        f"SmolLM2-135M-Instruct (fp32, CPU), prefix {PREFIX} + suffix {SUFFIX} tokens, "
        f"memory at layers {measured.layers}, {repeats} interleaved rounds, medians."
    )
    return "\n".join(
        [
            *_ratio_table(caption, measured.rows),
            "",
            "Frame stacking (the last N frames' prefixes concatenated before the current frame):",
            "",
            "| frames N | tokens | step (ms) | / plain step |",
            "|---|---|---|---|",
            *stacking_rows,
            "",
            TEMPOFIT_NOTE,
        ]
    )


def run_gemma3(repeats: int = 9) -> str:
    """Gemma 3 270M: the step-time ratios at N = 8 and 32 and memory per frame."""
    torch.manual_seed(0)
    model, _ = load_gemma3()
    measured = _ratio_rows(model, GEMMA3_FRAMES, repeats, logits_to_keep=SUFFIX)
    caption = (
        f"Gemma 3 270M (fp32, CPU; 18 layers, one KV head of dim 256, 15 of them "
        f"sliding-window layers), prefix {PREFIX} + suffix {SUFFIX} tokens, logits of the "
        f"suffix (action) positions only, memory at layers {measured.layers}, {repeats} "
        f"interleaved rounds, medians."
    )
    return "\n".join([*_ratio_table(caption, measured.rows), "", GEMMA3_NOTE])


if __name__ == "__main__":
    print(run_gemma3() if sys.argv[1:] == ["gemma3"] else run())
