"""Tests for kernels: FGTB retrieval (reference, blocked, triton under the interpreter), slopes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import (
    FGTBMetadata,
    alibi_slopes,
    fgtb_blocked,
    fgtb_forward,
    fgtb_reference,
    fgtb_retrieve,
    fgtb_scores,
)

TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    # Both paths compute in fp32 and round once at the end: at most an ulp or so apart.
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def make_inputs(
    batch: int = 2,
    heads: int = 3,
    seq: int = 5,
    hist_len: int = 37,
    dim: int = 16,
    dtype: torch.dtype = torch.float32,
    valid_fraction: float = 0.7,
    seed: int = 0,
) -> dict:
    """Random FGTB inputs: frame time tags in 0..7, current time 8, random validity mask."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(batch, heads, seq, dim, generator=gen).to(dtype),
        "k_hist": torch.randn(batch, heads, hist_len, dim, generator=gen).to(dtype),
        "v_hist": torch.randn(batch, heads, hist_len, dim, generator=gen).to(dtype),
        "hist_time": torch.randint(0, 8, (batch, hist_len), generator=gen).float(),
        "hist_valid": torch.rand(batch, hist_len, generator=gen) < valid_fraction,
        "t": torch.full((batch,), 8.0),
        "slopes": alibi_slopes(heads),
        "bias_scale": 0.5,
    }


def backend_args(inputs: dict, scale: float | None = None) -> tuple:
    """``make_inputs``' dict as a backend takes it: (query, k_hist, v_hist, FGTBMetadata)."""
    metadata = FGTBMetadata(
        inputs["hist_time"],
        inputs["hist_valid"],
        inputs["t"],
        inputs["slopes"],
        inputs["bias_scale"],
        scale,
    )
    return inputs["query"], inputs["k_hist"], inputs["v_hist"], metadata


def naive_fgtb(inputs: dict, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element Python loops straight from the formula, in float64."""
    q, k, v = (inputs[name].double() for name in ("query", "k_hist", "v_hist"))
    batch, heads, seq, dim = q.shape
    hist_len = k.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    k_ctx = torch.zeros(batch, heads, seq, dim, dtype=torch.float64)
    v_ctx = torch.zeros_like(k_ctx)
    for b in range(batch):
        for h in range(heads):
            for s in range(seq):
                scores = {}
                for j in range(hist_len):
                    if not inputs["hist_valid"][b, j]:
                        continue
                    dot = sum(q[b, h, s, d].item() * k[b, h, j, d].item() for d in range(dim))
                    gap = abs(inputs["t"][b].item() - inputs["hist_time"][b, j].item())
                    slope = inputs["slopes"][h].item()
                    scores[j] = scale * dot - inputs["bias_scale"] * slope * gap
                if not scores:
                    continue
                top = max(scores.values())
                weights = {j: math.exp(x - top) for j, x in scores.items()}
                total = sum(weights.values())
                for j, w in weights.items():
                    k_ctx[b, h, s] += (w / total) * k[b, h, j]
                    v_ctx[b, h, s] += (w / total) * v[b, h, j]
    return k_ctx, v_ctx


def assert_close_pair(actual, expected, dtype=torch.float32) -> None:
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.float(), want.float(), **TOLERANCES[dtype])


# --- reference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [None, 0.3])
def test_reference_matches_naive_loop(scale):
    inputs = make_inputs(batch=2, heads=2, seq=3, hist_len=6, dim=4, seed=1)
    inputs["hist_valid"][1] = False  # a batch row with no valid token at all
    inputs["hist_valid"][0, 0] = True
    got = fgtb_reference(*backend_args(inputs, scale=scale))
    want = naive_fgtb(inputs, scale=scale)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0][1], torch.zeros_like(got[0][1]))


def test_reference_output_dtype_follows_query():
    inputs = make_inputs(dtype=torch.float16)
    k_ctx, v_ctx = fgtb_reference(*backend_args(inputs))
    assert k_ctx.dtype == v_ctx.dtype == torch.float16
    assert k_ctx.shape == v_ctx.shape == inputs["query"].shape


# --- blocked vs reference ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [1, 7, 16, 512])
def test_blocked_matches_reference(dtype, block_size):
    # Odd S, L not a multiple of the block size, random mask.
    inputs = make_inputs(seq=7, hist_len=37, dtype=dtype, seed=block_size)
    args = backend_args(inputs)
    assert_close_pair(fgtb_blocked(*args, block_size=block_size), fgtb_reference(*args), dtype)


def test_blocked_default_block_size_over_several_blocks():
    inputs = make_inputs(batch=1, heads=2, seq=9, hist_len=1200, dim=32, seed=3)
    assert_close_pair(fgtb_blocked(*backend_args(inputs)), fgtb_reference(*backend_args(inputs)))


def test_blocked_gradients_match_reference():
    inputs = make_inputs(seq=4, hist_len=21, seed=8)
    grads = []
    for fn in (fgtb_reference, lambda *x: fgtb_blocked(*x, block_size=5)):
        query = inputs["query"].clone().requires_grad_(True)
        k_ctx, v_ctx = fn(*backend_args({**inputs, "query": query}))
        (k_ctx.square().sum() + v_ctx.sum()).backward()
        grads.append(query.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_rows_without_valid_tokens_are_zeros(backend):
    inputs = make_inputs(batch=3, hist_len=20, seed=4)
    inputs["hist_valid"][0] = False
    inputs["hist_valid"][2, :] = False
    inputs["hist_valid"][1, 3] = True
    k_ctx, v_ctx = fgtb_retrieve(**inputs, backend=backend)
    for out in (k_ctx, v_ctx):
        assert not torch.isnan(out).any()
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert torch.equal(out[2], torch.zeros_like(out[2]))
        assert out[1].abs().sum() > 0


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_empty_history_gives_zeros(backend):
    inputs = make_inputs(hist_len=0)
    k_ctx, v_ctx = fgtb_retrieve(**inputs, backend=backend)
    assert torch.equal(k_ctx, torch.zeros_like(inputs["query"]))
    assert torch.equal(v_ctx, torch.zeros_like(inputs["query"]))


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_large_bias_picks_the_nearest_valid_frame(backend):
    frames, tokens_per_frame, dim = 6, 4, 8
    hist_len = frames * tokens_per_frame
    inputs = make_inputs(batch=1, heads=2, seq=3, hist_len=hist_len, dim=dim, seed=5)
    frame_of_token = torch.arange(hist_len) // tokens_per_frame
    inputs["hist_time"] = frame_of_token.float()[None]  # frame j recorded at time j
    inputs["hist_valid"] = torch.ones(1, hist_len, dtype=torch.bool)
    inputs["hist_valid"][0, frame_of_token == 5] = False  # the newest frame is masked out
    inputs["t"] = torch.tensor([6.0])
    # v_hist is a one-hot frame indicator, so v_ctx is the weight mass each frame receives.
    one_hot = torch.nn.functional.one_hot(frame_of_token, dim).float()
    inputs["v_hist"] = one_hot.expand(1, 2, hist_len, dim).clone()
    inputs["bias_scale"] = 1e4
    _, frame_mass = fgtb_retrieve(**inputs, backend=backend)
    expected = torch.zeros(dim)
    expected[4] = 1.0  # frame 4 is the nearest valid one
    torch.testing.assert_close(frame_mass, expected.expand_as(frame_mass))


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 4),
    seq=st.integers(1, 9),
    hist_len=st.integers(0, 40),
    dim=st.integers(1, 12),
    block_size=st.integers(1, 50),
    valid_fraction=st.floats(0.0, 1.0),
    bias_scale=st.floats(0.0, 50.0),
    seed=st.integers(0, 2**16),
)
def test_blocked_equals_reference_property(
    batch, heads, seq, hist_len, dim, block_size, valid_fraction, bias_scale, seed
):
    inputs = make_inputs(batch, heads, seq, hist_len, dim, valid_fraction=valid_fraction, seed=seed)
    inputs["bias_scale"] = bias_scale
    args = backend_args(inputs)
    assert_close_pair(fgtb_blocked(*args, block_size=block_size), fgtb_reference(*args))


# --- dispatch and validation -------------------------------------------------------------------


def test_auto_backend_on_cpu_is_blocked_and_matches_reference():
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "blocked"
    inputs = make_inputs(seed=6)
    assert_close_pair(fgtb_retrieve(**inputs), fgtb_retrieve(**inputs, backend="reference"))


def test_auto_backend_on_cuda_prefers_triton_up_to_its_head_dim():
    cuda = torch.device("cuda")
    expected = "triton" if kernels.triton_available() else "blocked"
    assert kernels.resolve_backend("auto", cuda, head_dim=128) == expected
    assert kernels.resolve_backend("auto", cuda, head_dim=512) == "blocked"
    assert kernels.resolve_backend("reference", cuda, head_dim=64) == "reference"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        fgtb_retrieve(**make_inputs(), backend="cuda-magic")


@pytest.mark.skipif(not kernels.triton_available(), reason="triton is not importable")
def test_triton_backend_on_cpu_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        fgtb_retrieve(**make_inputs(), backend="triton")


def test_float64_epoch_times_keep_their_resolution():
    inputs = make_inputs(batch=2, hist_len=12, seed=7)
    relative = fgtb_retrieve(**inputs)
    epoch = 1.7e9  # float32 resolution at 1.7e9 is 128 s: gaps of 1 s would vanish
    inputs["hist_time"] = inputs["hist_time"].double() + epoch
    inputs["t"] = inputs["t"].double() + epoch
    assert_close_pair(fgtb_retrieve(**inputs), relative)


def with_value_at_first(tensor: torch.Tensor, value: float) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[0] = value
    return out


BAD_INPUTS = [
    ("query", lambda x: x["query"][..., :-1], "query"),
    ("query", lambda x: x["query"][0], "query"),
    ("k_hist", lambda x: x["k_hist"][:, :, :, :-1], "k_hist"),
    ("v_hist", lambda x: x["v_hist"][:, :, :-1], "v_hist"),
    ("hist_time", lambda x: x["hist_time"][:, :-1], "hist_time"),
    ("hist_valid", lambda x: x["hist_valid"][:1], "hist_valid"),
    ("t", lambda x: x["t"][:1], "t"),
    ("slopes", lambda x: x["slopes"][:-1], "slopes"),
    ("query", lambda x: x["query"].long(), "query"),
    ("k_hist", lambda x: x["k_hist"].int(), "k_hist"),
    ("hist_time", lambda x: x["hist_time"].long(), "hist_time"),
    ("hist_valid", lambda x: x["hist_valid"].float(), "hist_valid"),
    ("query", lambda x: with_value_at_first(x["query"], math.nan), "query"),
    ("k_hist", lambda x: with_value_at_first(x["k_hist"], math.inf), "k_hist"),
    ("v_hist", lambda x: with_value_at_first(x["v_hist"], -math.inf), "v_hist"),
    ("hist_time", lambda x: x["hist_time"] * math.inf, "hist_time"),
    ("slopes", lambda x: x["slopes"].to("meta"), "device"),
    ("v_hist", lambda x: x["v_hist"].numpy(), "v_hist"),
    ("bias_scale", lambda x: math.nan, "bias_scale"),
    ("scale", lambda x: math.inf, "scale"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "corrupt", "message"), BAD_INPUTS)
def test_bad_inputs_raise_value_error_naming_the_argument(name, corrupt, message):
    inputs = make_inputs()
    inputs[name] = corrupt(inputs)
    with pytest.raises(ValueError, match=message):
        fgtb_retrieve(**inputs)


# --- metadata ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_forward_with_metadata_equals_retrieve(backend):
    inputs = make_inputs(seed=9)
    want = fgtb_retrieve(**inputs, scale=0.2, backend=backend)
    got = fgtb_forward(*backend_args(inputs, scale=0.2), backend=backend)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_metadata_is_frozen_and_checked_once_by_forward():
    query, k_hist, v_hist, metadata = backend_args(make_inputs())
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.bias_scale = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="metadata must be an FGTBMetadata"):
        fgtb_forward(query, k_hist, v_hist, {"bias_scale": 0.5})  # type: ignore[arg-type]
    short_t = dataclasses.replace(metadata, t=metadata.t[:1])
    with pytest.raises(ValueError, match=r"t must have shape \(B,\)"):
        fgtb_forward(query, k_hist, v_hist, short_t)


@pytest.mark.parametrize("time", [8.0, torch.tensor(8.0), torch.tensor([8.0, 8.0])])
def test_scores_with_alibi_slopes_are_the_reference_weights(time):
    inputs = make_inputs(seed=10)
    query, k_hist, hist_time, hist_valid = (
        inputs[name] for name in ("query", "k_hist", "hist_time", "hist_valid")
    )
    metadata = FGTBMetadata.with_alibi_slopes(hist_time, hist_valid, time, 0.5, num_heads=3)
    assert torch.equal(metadata.slopes, alibi_slopes(3)) and metadata.t.tolist() == [8.0, 8.0]
    weights = torch.softmax(fgtb_scores(query, k_hist, metadata), dim=-1)
    k_ctx, _ = fgtb_reference(*backend_args(inputs))  # slopes alibi_slopes(3), t = 8
    torch.testing.assert_close(weights @ k_hist, k_ctx)


# --- slopes ------------------------------------------------------------------------------------


def test_alibi_slopes_power_of_two():
    slopes = alibi_slopes(8)
    assert slopes.dtype == torch.float32 and slopes.shape == (8,)
    assert slopes.tolist() == [1 / 2**i for i in range(1, 9)]


@pytest.mark.parametrize(
    ("num_heads", "exponents"),
    [
        (1, [-8]),
        (3, [-4, -8, -2]),
        (12, [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]),
    ],
)
def test_alibi_slopes_non_power_of_two_rule(num_heads, exponents):
    torch.testing.assert_close(alibi_slopes(num_heads), torch.tensor([2.0**e for e in exponents]))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_alibi_slopes_rejects_bad_head_counts(bad):
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(bad)


# --- triton under the CPU interpreter ----------------------------------------------------------

# Runs in a child process: TRITON_INTERPRET=1 must be set before triton is first imported.
TRITON_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    sys.path.insert(0, {tests_dir!r})
    from test_kernels import backend_args, make_inputs
    from kernels import fgtb_reference, fgtb_retrieve

    errors = []
    cases = [
        # (batch, heads, seq, hist_len, dim, dtype, variant)
        (2, 3, 5, 37, 16, "float32", ""),
        (1, 2, 17, 70, 24, "float32", ""),  # D padded to 32, S over two 16-row blocks
        (2, 1, 3, 130, 64, "float32", "strided"),  # several L blocks, non-contiguous views
        (1, 1, 4, 20, 128, "float32", "large_bias"),
        (2, 2, 7, 45, 32, "float16", ""),
        (1, 2, 9, 66, 64, "float16", "strided"),
        (2, 2, 5, 33, 32, "bfloat16", ""),
    ]
    for i, (b, h, s, l, d, dtype, variant) in enumerate(cases):
        inputs = make_inputs(b, h, s, l, d, dtype=getattr(torch, dtype), seed=i)
        inputs["hist_valid"][0, : l // 2] = False
        if b > 1:
            inputs["hist_valid"][1] = False  # a row with no valid token -> zeros
        if variant == "strided":  # (B, L, H, D) storage seen as (B, H, L, D)
            for name in ("query", "k_hist", "v_hist"):
                inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        if variant == "large_bias":
            inputs["bias_scale"] = 1e4
        got = fgtb_retrieve(**inputs, backend="triton")
        want = fgtb_reference(*backend_args(inputs))
        errors.append({{
            "case": [b, h, s, l, d, dtype, variant],
            "dtype_ok": all(g.dtype == w.dtype for g, w in zip(got, want)),
            "nan": any(bool(torch.isnan(g).any()) for g in got),
            "max_err": max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want)),
            "zero_row_ok": b == 1 or all(bool((g[1] == 0).all()) for g in got),
        }})
    print(json.dumps(errors))
    """
)

TRITON_MAX_ERROR = {"float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernel_matches_reference_under_interpreter():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = TRITON_INTERPRETER_SCRIPT.format(tests_dir=tests_dir)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in results:
        dtype = row["case"][5]
        assert row["dtype_ok"] and not row["nan"] and row["zero_row_ok"], row
        assert row["max_err"] <= TRITON_MAX_ERROR[dtype], row


# --- packaging ---------------------------------------------------------------------------------


def test_transformers_does_not_take_our_kernels_for_hf_kernels():
    import_utils = pytest.importorskip("transformers.utils.import_utils")
    assert not import_utils.is_kernels_available()


def test_hugging_face_kernels_is_not_installed_beside_ours():
    """Hugging Face's `kernels` distribution ships a top-level `kernels` package too: installed
    beside ours, one shadows the other (transformers >= 5.25 requires it, hence the cap on
    transformers in pyproject.toml)."""
    from importlib import metadata

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("kernels")
