"""Benchmark FGTB retrieval backends; reports ratios measured in one run.

CPU: blocked vs reference. CUDA (when available): also the fused Triton kernel and
torch FlexAttention with an equivalent score_mod. History sizes go up to N * S = 32k tokens.

    python benchmarks/bench_kernels.py [--device cuda] [--repeats 7]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

import kernels

# (prefix tokens S, frames N); L = N * S up to 32k. H = 3, D = 64 as in SmolLM2's KV heads.
SHAPES = [(256, 2), (256, 8), (256, 32), (256, 128), (1024, 8), (1024, 32)]
HEADS, HEAD_DIM, BATCH = 3, 64, 1
BIAS_SCALE = 0.1


def make_inputs(seq: int, frames: int, dtype: torch.dtype, device: str) -> dict:
    """Random inputs: N frames of S tokens each, frame j at time j, ~10 % padding masked."""
    hist_len = seq * frames
    gen = torch.Generator().manual_seed(0)
    frame_of_token = torch.arange(hist_len) // seq
    inputs = {
        "query": torch.randn(BATCH, HEADS, seq, HEAD_DIM, generator=gen),
        "k_hist": torch.randn(BATCH, HEADS, hist_len, HEAD_DIM, generator=gen),
        "v_hist": torch.randn(BATCH, HEADS, hist_len, HEAD_DIM, generator=gen),
        "hist_time": frame_of_token.float().expand(BATCH, hist_len).clone(),
        "hist_valid": torch.rand(BATCH, hist_len, generator=gen) > 0.1,
        "t": torch.full((BATCH,), float(frames)),
        "slopes": kernels.alibi_slopes(HEADS),
    }
    for name in ("query", "k_hist", "v_hist"):
        inputs[name] = inputs[name].to(dtype)
    return {name: value.to(device) for name, value in inputs.items()}


def median_ms(fns: dict[str, Callable[[], object]], device: str, repeats: int) -> dict[str, float]:
    """Median wall time of one call of each function, in ms.

    The functions run interleaved (a, b, c, a, b, c, ...) so that a busy, shared machine slows
    them alike and their ratios stay meaningful. One warm-up call each; CUDA is synchronised.
    """

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    sync()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(samples) for name, samples in times.items()}


def flex_fgtb(inputs: dict) -> Callable[[], tuple[Tensor, Tensor]] | None:
    """FlexAttention equivalent (one call on V' = [K_hist | V_hist]); None if unavailable."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    hist_time, valid, t, slopes = (inputs[n] for n in ("hist_time", "hist_valid", "t", "slopes"))
    dim = inputs["query"].shape[-1]

    def score_mod(score, b, h, q_idx, kv_idx):
        gap = torch.abs(t[b] - hist_time[b, kv_idx])
        biased = score - BIAS_SCALE * slopes[h] * gap
        return torch.where(valid[b, kv_idx], biased, -float("inf"))

    compiled = torch.compile(flex_attention)
    values = torch.cat([inputs["k_hist"], inputs["v_hist"]], dim=-1)

    def call() -> tuple[Tensor, Tensor]:
        out = compiled(
            inputs["query"],
            inputs["k_hist"],
            values,
            score_mod=score_mod,
            scale=1.0 / math.sqrt(dim),
        )
        k_ctx, v_ctx = out.split(dim, dim=-1)
        return k_ctx, v_ctx

    try:
        call()
    except Exception as error:  # flex support varies by torch version / GPU
        print(f"flex_attention skipped: {type(error).__name__}: {error}")
        return None
    return call


def max_error(got: tuple[Tensor, Tensor], want: tuple[Tensor, Tensor]) -> float:
    return max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want, strict=True))


def run(device: str = "cpu", repeats: int = 5) -> list[dict]:
    """Time the backends on each shape; one row per (shape, dtype) with times and ratios.

    Ratios are backend / reference (below 1 is faster); on CUDA also triton / flex.
    Backends run through `fgtb_retrieve(check_finite=False)` so the NaN scan is not timed.
    """
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    dtypes = [torch.float16, torch.float32] if on_cuda else [torch.float32]
    rows = []
    for dtype in dtypes:
        for seq, frames in SHAPES:
            inputs = make_inputs(seq, frames, dtype, device)

            def call(backend: str, inputs: dict = inputs) -> tuple[Tensor, Tensor]:
                return kernels.fgtb_retrieve(
                    **inputs, bias_scale=BIAS_SCALE, backend=backend, check_finite=False
                )

            want = call("reference")
            candidates: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
                "reference": lambda: call("reference"),
                "blocked": lambda: call("blocked"),
            }
            if on_cuda and kernels.triton_available():
                candidates["triton"] = lambda: call("triton")
                flex = flex_fgtb(inputs)
                if flex is not None:
                    candidates["flex"] = flex
            timings = median_ms(candidates, device, repeats)

            row: dict = {
                "device": device,
                "dtype": str(dtype).removeprefix("torch."),
                "S": seq,
                "N": frames,
                "L": seq * frames,
                "H": HEADS,
                "D": HEAD_DIM,
            }
            for name, fn in candidates.items():
                row[f"{name}_ms"] = timings[name]
                if name != "reference":
                    row[f"{name}_max_err"] = max_error(fn(), want)
                    row[f"{name}_over_reference"] = timings[name] / timings["reference"]
            if "flex" in timings:
                row["triton_over_flex"] = timings["triton"] / timings["flex"]
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    table = [columns] + [[cell(row.get(key, "")) for key in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in table
    )


def report() -> str:
    """Markdown for BENCHMARKS.md: the CPU paths always, Triton and FlexAttention on CUDA."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    note = (
        ""
        if device == "cuda"
        else (
            "\n\nNo GPU on this machine: Triton and FlexAttention rows need CUDA "
            "(`python benchmarks/bench_kernels.py --device cuda`)."
        )
    )
    return "```\n" + format_table(run(device)) + "\n```" + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(format_table(run(args.device, args.repeats)))


if __name__ == "__main__":
    main()
