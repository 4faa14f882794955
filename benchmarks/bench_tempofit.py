"""TempoFit overhead on the real frozen model (SmolLM2-135M-Instruct, CPU).

One control step = one forward over a 256-token prefix + 16-token suffix. Measured side by side:
- step with TempoFit memory (4 layers, N frames held) / the plain forward, N = 4, 8, 16, 32
  (targets <= 1.03 at N=8, <= 1.10 at N=32);
- memory added per frame (bytes);
- frame stacking, the baseline TempoFit replaces: one forward over the last N frames' prefixes
  concatenated + the suffix, / the plain forward.
"""

from __future__ import annotations

import torch

from benchmarks.timing import compare, fmt_ms, median_time
from memory import LayerwiseKVMemory, TempoFitConfig
from policies import TempoFit, default_layers, load_smollm2

PREFIX = 256
SUFFIX = 16
FRAMES = (4, 8, 16, 32)
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


def _frame_nbytes(memory: LayerwiseKVMemory) -> int:
    """Bytes one stored frame adds: K and V slots of every memory layer."""
    itemsize = torch.empty((), dtype=memory.dtype).element_size()
    slot_elements = memory.batch_size * memory.num_kv_heads * memory.head_dim
    return sum(2 * slot_elements * memory.slot_len(layer) * itemsize for layer in memory.layers)


def run(repeats: int = 15) -> str:
    torch.manual_seed(0)
    model, _ = load_smollm2()
    vocab = model.config.vocab_size
    frames = [torch.randint(0, vocab, (1, PREFIX + SUFFIX)) for _ in range(max(FRAMES) + 1)]
    current = frames[-1]
    layers = default_layers(model.config.num_hidden_layers, k=4)

    def plain() -> None:
        with torch.inference_mode():
            model(current)

    rows = []
    for n in FRAMES:
        tf = TempoFit(model, TempoFitConfig(layers=layers, capacity=n))
        with torch.inference_mode():
            for frame in frames[:n]:  # fill the FIFO so retrieval sees N frames
                with tf.step(prefix_len=PREFIX):
                    model(frame)
        step_t = [float(n)]

        def with_memory(tf: TempoFit = tf, step_t: list[float] = step_t) -> None:
            # same frame each round; time advances so the FIFO keeps N frames
            step_t[0] += 1
            with torch.inference_mode(), tf.step(prefix_len=PREFIX, t=step_t[0]):
                model(current)

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

    stacking_rows = []
    base = median_time(plain, repeats=5, warmup=1)
    for n in STACKING_FRAMES:
        stacked = torch.cat([f[:, :PREFIX] for f in frames[-n - 1 : -1]] + [current], dim=1)

        def stack(stacked: torch.Tensor = stacked) -> None:
            with torch.inference_mode():
                model(stacked)

        t = median_time(stack, repeats=3, warmup=1)
        stacking_rows.append(f"| {n} | {stacked.shape[1]} | {fmt_ms(t)} | {t / base:.2f} |")

    return "\n".join(
        [
            f"SmolLM2-135M-Instruct (fp32, CPU), prefix {PREFIX} + suffix {SUFFIX} tokens, "
            f"memory at layers {layers}, {repeats} interleaved rounds, medians.",
            "",
            "| frames N | step with memory (ms) | plain step (ms) | ratio (paired median) "
            "| memory per frame | target |",
            "|---|---|---|---|---|---|",
            *rows,
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


if __name__ == "__main__":
    print(run())
