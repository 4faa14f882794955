"""LayerwiseKVMemory and TempoFitConfig against a readable list-of-frames reference."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor

from memory import LayerwiseKVMemory, TempoFitConfig
from memory.layer_ring import LayerRing, RingSpec

HEADS = 3  # not a power of two: exercises the ALiBi extra-slope rule
HEAD_DIM = 8
LAYER = 2
ATOL = 2e-5
RTOL = 1e-4


def reference_alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi slopes written out independently of kernels.alibi_slopes."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two(closest)
    if closest < num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return slopes


@dataclass
class Frame:
    keys: Tensor  # (B, H, S, D)
    values: Tensor  # (B, H, S, D)
    times: list[float]  # per session
    lens: list[int]  # valid tokens per session


class ReferenceMemory:
    """The specification: a plain list of the last `capacity` frames, loops over b and h."""

    def __init__(self, config: TempoFitConfig) -> None:
        self.config = config
        self.frames: list[Frame] = []

    def push(self, k: Tensor, v: Tensor, times: list[float], lens: list[int] | None = None):
        lens = lens if lens is not None else [k.shape[2]] * k.shape[0]
        self.frames.append(Frame(k.double().clone(), v.double().clone(), list(times), lens))
        self.frames = self.frames[-self.config.capacity :]

    def retrieve(self, query: Tensor, times: list[float]) -> tuple[Tensor, Tensor]:
        batch, heads, seq_len, dim = query.shape
        slopes = reference_alibi_slopes(heads)
        alpha_s = seq_len if self.config.alpha is None else self.config.alpha
        k_ctx = torch.zeros(batch, heads, seq_len, dim, dtype=torch.float64)
        v_ctx = torch.zeros_like(k_ctx)
        for b in range(batch):
            if not self.frames:
                continue
            for h in range(heads):
                keys = torch.cat([f.keys[b, h, : f.lens[b]] for f in self.frames])
                values = torch.cat([f.values[b, h, : f.lens[b]] for f in self.frames])
                taus = torch.tensor(
                    [f.times[b] for f in self.frames for _ in range(f.lens[b])],
                    dtype=torch.float64,
                )
                gap = (times[b] - taus).abs()
                bias = -self.config.beta * alpha_s * slopes[h] * gap
                scores = query[b, h].double() @ keys.T / math.sqrt(dim) + bias
                weights = torch.softmax(scores, dim=-1)
                k_ctx[b, h] = weights @ keys
                v_ctx[b, h] = weights @ values
        return k_ctx, v_ctx

    def load(self, k_t: Tensor, v_t: Tensor, times: list[float], query: Tensor | None = None):
        k_ctx, v_ctx = self.retrieve(k_t if query is None else query, times)
        loaded = []
        for current, context in ((k_t.double(), k_ctx), (v_t.double(), v_ctx)):
            tilde = current + context
            if self.config.rescale:
                tilde = (
                    tilde * current.norm(dim=-1, keepdim=True) / tilde.norm(dim=-1, keepdim=True)
                )
            loaded.append(tilde)
        return loaded[0], loaded[1]


def make_config(**overrides) -> TempoFitConfig:
    fields = {"layers": [0, LAYER], "capacity": 3, "beta": 0.05, "backend": "reference"}
    fields.update(overrides)
    return TempoFitConfig(**fields)


def make_memory(config: TempoFitConfig, batch_size: int = 2, **kwargs) -> LayerwiseKVMemory:
    return LayerwiseKVMemory(config, HEADS, HEAD_DIM, batch_size=batch_size, **kwargs)


def random_kv(generator: torch.Generator, batch: int, seq_len: int, dtype=torch.float32):
    shape = (batch, HEADS, seq_len, HEAD_DIM)
    k = torch.randn(shape, generator=generator).to(dtype)
    v = torch.randn(shape, generator=generator).to(dtype)
    return k, v


def pushed_alike(
    config: TempoFitConfig, seed: int, steps: int
) -> tuple[LayerwiseKVMemory, ReferenceMemory, torch.Generator]:
    """A memory and the reference given the same ``steps`` random frames (B = 2, S = 5) at
    times 0, 1, ...; the generator continues from there."""
    generator = torch.Generator().manual_seed(seed)
    memory, reference = make_memory(config), ReferenceMemory(config)
    for step in range(steps):
        k, v = random_kv(generator, 2, 5)
        memory.push(LAYER, k, v, float(step))
        reference.push(k, v, [float(step)] * 2)
    return memory, reference, generator


def assert_close(actual: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------
# retrieval semantics


@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_fifo_keeps_exactly_the_last_n_frames(backend: str) -> None:
    config = make_config(capacity=3, backend=backend)
    generator = torch.Generator().manual_seed(0)
    frames = [random_kv(generator, 2, 5) for _ in range(3 + 4)]

    full = make_memory(config)
    for step, (k, v) in enumerate(frames):
        full.push(LAYER, k, v, float(step))
    fresh = make_memory(config)
    reference = ReferenceMemory(config)
    for step, (k, v) in enumerate(frames[-3:], start=4):
        fresh.push(LAYER, k, v, float(step))
        reference.push(k, v, [float(step)] * 2)

    assert full.num_frames(LAYER) == 3
    assert full.num_frames(0) == 0
    query, _ = random_kv(generator, 2, 4)
    got = full.retrieve(LAYER, query, 7.0)
    want = fresh.retrieve(LAYER, query, 7.0)
    for got_part, want_part, ref_part in zip(
        got, want, reference.retrieve(query, [7.0, 7.0]), strict=True
    ):
        torch.testing.assert_close(got_part, want_part, atol=1e-6, rtol=1e-6)
        assert_close(got_part, ref_part)

    k_hist, v_hist, hist_time, hist_valid = full.history(LAYER)
    assert torch.equal(k_hist, torch.cat([k for k, _ in frames[-3:]], dim=2))
    assert torch.equal(v_hist, torch.cat([v for _, v in frames[-3:]], dim=2))
    assert hist_time[0].tolist() == [4.0] * 5 + [5.0] * 5 + [6.0] * 5
    assert bool(hist_valid.all())


def test_very_large_beta_equals_only_the_latest_frame() -> None:
    config = make_config(capacity=4, beta=1e4)
    generator = torch.Generator().manual_seed(1)
    frames = [random_kv(generator, 2, 4) for _ in range(4)]
    memory = make_memory(config)
    for step, (k, v) in enumerate(frames):
        memory.push(LAYER, k, v, float(step))
    latest_only = make_memory(config)
    latest_only.push(LAYER, *frames[-1], 3.0)

    query, _ = random_kv(generator, 2, 6)
    # At the latest frame's own time its gap is 0, every other frame pays >= 1e4 * m_h * S.
    for got, want in zip(
        memory.retrieve(LAYER, query, 3.0), latest_only.retrieve(LAYER, query, 3.0), strict=True
    ):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("rescale", [True, False])
def test_load_matches_reference_and_rescale_preserves_norms(rescale: bool) -> None:
    memory, reference, generator = pushed_alike(make_config(rescale=rescale), seed=2, steps=4)
    k_t, v_t = random_kv(generator, 2, 5)
    k_hat, v_hat = memory.load(LAYER, k_t, v_t, 4.0)
    want_k, want_v = reference.load(k_t, v_t, [4.0, 4.0])
    assert_close(k_hat, want_k)
    assert_close(v_hat, want_v)
    if rescale:
        for loaded, current in ((k_hat, k_t), (v_hat, v_t)):
            torch.testing.assert_close(
                loaded.norm(dim=-1), current.norm(dim=-1), atol=1e-5, rtol=1e-5
            )
    else:
        assert not torch.allclose(k_hat.norm(dim=-1), k_t.norm(dim=-1))


def test_empty_memory_load_returns_inputs_bit_exactly() -> None:
    memory = make_memory(make_config())
    generator = torch.Generator().manual_seed(3)
    k_t, v_t = random_kv(generator, 2, 5)
    k_hat, v_hat = memory.load(LAYER, k_t, v_t, 0.0)
    assert k_hat is k_t and v_hat is v_t

    memory.push(LAYER, k_t, v_t, 0.0)
    memory.reset()
    assert memory.num_frames(LAYER) == 0
    k_hat, v_hat = memory.load(LAYER, k_t, v_t, 0.0)  # reset also forgets the time floor
    assert torch.equal(k_hat, k_t) and torch.equal(v_hat, v_t)
    k_ctx, v_ctx = memory.retrieve(LAYER, k_t, 0.0)
    assert not k_ctx.any() and not v_ctx.any()


def test_variable_prefix_lengths_are_masked_like_the_reference() -> None:
    config = make_config(capacity=3)
    generator = torch.Generator().manual_seed(4)
    memory, reference = make_memory(config), ReferenceMemory(config)
    # Lengths that grow the slot (5 -> 9 -> 20) and shorter frames overwriting longer ones.
    pushes = [(5, [5, 3]), (9, [2, 9]), (4, [4, 1]), (20, [20, 11]), (3, [3, 2])]
    for step, (seq_len, lens) in enumerate(pushes):
        k, v = random_kv(generator, 2, seq_len)
        reference.push(k, v, [float(step)] * 2, lens)
        padded_k, padded_v = k.clone(), v.clone()
        for b, length in enumerate(lens):  # padding may hold anything, even NaN
            padded_k[b, :, length:] = float("nan")
            padded_v[b, :, length:] = 1e30
        memory.push(LAYER, padded_k, padded_v, float(step), prefix_lens=torch.tensor(lens))

    assert memory.slot_len(LAYER) <= config.max_prefix_len
    query, _ = random_kv(generator, 2, 7)
    for got, want in zip(
        memory.retrieve(LAYER, query, 5.0), reference.retrieve(query, [5.0] * 2), strict=True
    ):
        assert_close(got, want)

    k_hist, _, _, hist_valid = memory.history(LAYER)
    slot_len = memory.slot_len(LAYER)
    for b in range(2):
        per_frame = hist_valid[b].reshape(3, slot_len).sum(dim=1).tolist()
        assert per_frame == [lens[b] for _, lens in pushes[-3:]]
    assert bool(torch.isfinite(k_hist).all())


def test_sessions_in_a_batch_are_independent() -> None:
    config = make_config(capacity=3)
    generator = torch.Generator().manual_seed(5)
    session_one = [random_kv(generator, 1, 6) for _ in range(5)]
    outputs = []
    for variant in range(2):
        other = torch.Generator().manual_seed(100 + variant)
        memory = make_memory(config)
        for step, (k1, v1) in enumerate(session_one):
            k0, v0 = random_kv(other, 1, 6)
            times = torch.tensor([10.0 * step * (variant + 1), float(step)])
            lens = [1 + (step + variant) % 6, 6]
            memory.push(LAYER, torch.cat([k0, k1]), torch.cat([v0, v1]), times, prefix_lens=lens)
        query0, _ = random_kv(other, 1, 4)
        query1 = torch.ones(1, HEADS, 4, HEAD_DIM)
        k_ctx, v_ctx = memory.retrieve(
            LAYER, torch.cat([query0, query1]), torch.tensor([99.0, 5.0])
        )
        outputs.append((k_ctx[1], v_ctx[1], k_ctx[0]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert torch.equal(outputs[0][1], outputs[1][1])
    assert not torch.allclose(outputs[0][2], outputs[1][2])


def test_gap_unit_seconds_with_non_uniform_times() -> None:
    config = make_config(capacity=4, gap_unit="seconds", beta=0.5)
    generator = torch.Generator().manual_seed(6)
    offsets = [0.0, 0.05, 0.4, 0.45, 1.7]
    frames = [random_kv(generator, 2, 4) for _ in offsets]
    query, _ = random_kv(generator, 2, 4)
    results = []
    for origin in (0.0, 1.7e9):  # episode-relative and epoch-second clocks give one answer
        memory, reference = make_memory(config), ReferenceMemory(config)
        for offset, (k, v) in zip(offsets, frames, strict=True):
            memory.push(LAYER, k, v, origin + offset)
            reference.push(k, v, [offset, offset])
        got = memory.retrieve(LAYER, query, origin + 2.0)
        for got_part, want_part in zip(got, reference.retrieve(query, [2.0, 2.0]), strict=True):
            assert_close(got_part, want_part)
        results.append(got)
    for relative, epoch in zip(*results, strict=True):
        torch.testing.assert_close(relative, epoch, atol=1e-6, rtol=1e-6)


def test_fixed_alpha_and_zero_beta_match_reference() -> None:
    generator = torch.Generator().manual_seed(7)
    frames = [random_kv(generator, 2, 5) for _ in range(3)]
    query, _ = random_kv(generator, 2, 2)
    for config in (make_config(alpha=64.0, beta=0.02), make_config(beta=0.0)):
        memory, reference = make_memory(config), ReferenceMemory(config)
        for step, (k, v) in enumerate(frames):
            memory.push(LAYER, k, v, float(2 * step))
            reference.push(k, v, [float(2 * step)] * 2)
        for got, want in zip(
            memory.retrieve(LAYER, query, 6.0), reference.retrieve(query, [6.0] * 2), strict=True
        ):
            assert_close(got, want)


def test_q2k_retrieves_with_the_given_query() -> None:
    memory, reference, generator = pushed_alike(make_config(retrieval="q2k"), seed=8, steps=2)
    k_t, v_t = random_kv(generator, 2, 5)
    query, _ = random_kv(generator, 2, 5)
    got = memory.load(LAYER, k_t, v_t, 2.0, query=query)
    for got_part, want_part in zip(
        got, reference.load(k_t, v_t, [2.0] * 2, query=query), strict=True
    ):
        assert_close(got_part, want_part)
    with pytest.raises(ValueError, match="q2k"):
        memory.load(LAYER, k_t, v_t, 2.0)
    with pytest.raises(ValueError, match="k2k"):
        make_memory(make_config()).load(LAYER, k_t, v_t, 2.0, query=query)


def test_concat_loading_uses_history_not_load() -> None:
    memory = make_memory(make_config(loading="concat"))
    generator = torch.Generator().manual_seed(9)
    k, v = random_kv(generator, 2, 3)
    memory.push(LAYER, k, v, 0.0)
    with pytest.raises(ValueError, match="history"):
        memory.load(LAYER, k, v, 1.0)
    k_hist, v_hist, hist_time, hist_valid = memory.history(LAYER)
    assert torch.equal(k_hist, k) and torch.equal(v_hist, v)
    assert hist_time.dtype == torch.float32 and hist_valid.dtype == torch.bool
    empty = memory.history(0)
    assert empty[0].shape == (2, HEADS, 0, HEAD_DIM) and empty[3].shape == (2, 0)


def test_bfloat16_storage_keeps_dtype() -> None:
    config = make_config()
    memory = make_memory(config, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(10)
    k, v = random_kv(generator, 2, 4, dtype=torch.bfloat16)
    memory.push(LAYER, k, v, 0.0)
    k_hat, v_hat = memory.load(LAYER, k, v, 1.0)
    assert k_hat.dtype == v_hat.dtype == torch.bfloat16
    assert memory.history(LAYER)[0].dtype == torch.bfloat16
    reference = ReferenceMemory(config)
    reference.push(k, v, [0.0, 0.0])
    torch.testing.assert_close(
        k_hat.double(), reference.load(k, v, [1.0, 1.0])[0], atol=3e-2, rtol=3e-2
    )


@settings(max_examples=25, deadline=None)
@given(
    capacity=st.integers(1, 4),
    pushes=st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6), st.floats(0.0, 3.0)), min_size=1, max_size=7
    ),
    seed=st.integers(0, 2**16),
)
def test_random_push_sequences_match_reference(capacity, pushes, seed) -> None:
    config = make_config(capacity=capacity, beta=0.1, gap_unit="seconds")
    generator = torch.Generator().manual_seed(seed)
    memory, reference = make_memory(config), ReferenceMemory(config)
    now = 0.0
    for len0, len1, gap in pushes:
        seq_len = max(len0, len1)
        now += gap
        k, v = random_kv(generator, 2, seq_len)
        memory.push(LAYER, k, v, now, prefix_lens=[len0, len1])
        reference.push(k, v, [now, now], [len0, len1])
    query, _ = random_kv(generator, 2, 3)
    for got, want in zip(
        memory.retrieve(LAYER, query, now + 1.0),
        reference.retrieve(query, [now + 1.0] * 2),
        strict=True,
    ):
        assert_close(got, want)


# ------------------------------------------------------------------------------------------
# input validation


def _kv(seq_len: int = 4, batch: int = 2, heads: int = HEADS, dim: int = HEAD_DIM, dtype=None):
    return torch.zeros(batch, heads, seq_len, dim, dtype=dtype or torch.float32)


def _with(value: float, at: tuple[int, ...] = (1, 0, 2, 3)) -> Tensor:
    tensor = _kv()
    tensor[at] = value
    return tensor


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.push(5, _kv(), _kv(), 0.0), r"unknown layer 5.*\[0, 2\]"),
        (lambda m: m.push(LAYER, _kv(heads=4), _kv(heads=4), 0.0), "4 heads"),
        (lambda m: m.push(LAYER, _kv(dim=4), _kv(dim=4), 0.0), "head dim 4"),
        (lambda m: m.push(LAYER, _kv(batch=3), _kv(batch=3), 0.0), "batch size 3"),
        (lambda m: m.push(LAYER, _kv(dtype=torch.float16), _kv(), 0.0), "dtype"),
        (lambda m: m.push(LAYER, _kv(), _kv(seq_len=5), 0.0), "same shape"),
        (lambda m: m.push(LAYER, _kv(), _kv()[0], 0.0), r"\(B, H, S, D\)"),
        (lambda m: m.push(LAYER, [1.0], _kv(), 0.0), "torch.Tensor"),
        (lambda m: m.push(LAYER, _with(float("nan")), _kv(), 0.0), "k contains NaN.*batch 1"),
        (lambda m: m.push(LAYER, _kv(), _with(float("inf")), 0.0), "v contains NaN or inf"),
        (lambda m: m.push(LAYER, _kv(seq_len=33), _kv(seq_len=33), 0.0), "max_prefix_len 32"),
        (lambda m: m.push(LAYER, _kv(), _kv(), 0.0, prefix_lens=[4, 5]), r"prefix_lens\[1\] = 5"),
        (lambda m: m.push(LAYER, _kv(), _kv(), 0.0, prefix_lens=[0, 4]), r"prefix_lens\[0\] = 0"),
        (lambda m: m.push(LAYER, _kv(), _kv(), 0.0, prefix_lens=[4]), "shape"),
        (lambda m: m.push(LAYER, _kv(), _kv(), 0.0, prefix_lens=[4.0, 4.0]), "integers"),
        (lambda m: m.push(LAYER, _kv(), _kv(), float("nan")), "finite; session 0"),
        (lambda m: m.push(LAYER, _kv(), _kv(), torch.tensor([0.0, float("inf")])), "session 1"),
        (lambda m: m.push(LAYER, _kv(), _kv(), torch.zeros(3)), "shape"),
        (lambda m: m.push(LAYER, _kv(), _kv(), "now"), "t must be"),
        (lambda m: m.push(LAYER, _kv(), _kv(), True), "t must be"),
        (lambda m: m.retrieve(LAYER, _with(float("nan")), 11.0), "query contains NaN"),
        (lambda m: m.retrieve(LAYER, _kv(heads=1), 11.0), "1 heads"),
        (lambda m: m.retrieve(7, _kv(), 11.0), "unknown layer 7"),
        (lambda m: m.load(LAYER, _with(float("inf")), _kv(), 11.0), "k_t contains NaN"),
        (lambda m: m.load(LAYER, _kv(), _kv(dim=2), 11.0), "head dim 2"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_problem(call, message: str) -> None:
    memory = make_memory(make_config(max_prefix_len=32))
    memory.push(LAYER, _kv(), _kv(), torch.tensor([3.0, 10.0]))
    with pytest.raises(ValueError, match=message):
        call(memory)
    assert memory.num_frames(LAYER) == 1  # nothing half-written


@pytest.mark.parametrize("action", ["push", "retrieve", "load"])
def test_time_going_backwards_names_session_and_both_times(action: str) -> None:
    memory = make_memory(make_config())
    memory.push(LAYER, _kv(), _kv(), torch.tensor([3.0, 10.0]))
    t = torch.tensor([4.0, 9.5])
    calls = {
        "push": lambda: memory.push(LAYER, _kv(), _kv(), t),
        "retrieve": lambda: memory.retrieve(LAYER, _kv(), t),
        "load": lambda: memory.load(LAYER, _kv(), _kv(), t),
    }
    with pytest.raises(ValueError, match=r"session 1 at layer 2.*t = 9\.5.*t = 10\.0"):
        calls[action]()
    memory.push(LAYER, _kv(), _kv(), torch.tensor([3.0, 10.0]))  # equal times are fine
    memory.push(0, _kv(), _kv(), 0.0)  # each layer has its own frames


def test_constructor_rejects_bad_arguments() -> None:
    config = make_config()
    with pytest.raises(ValueError, match="num_kv_heads"):
        LayerwiseKVMemory(config, 0, HEAD_DIM)
    with pytest.raises(ValueError, match="head_dim"):
        LayerwiseKVMemory(config, HEADS, True)
    with pytest.raises(ValueError, match="batch_size"):
        LayerwiseKVMemory(config, HEADS, HEAD_DIM, batch_size=-1)
    with pytest.raises(ValueError, match="dtype"):
        LayerwiseKVMemory(config, HEADS, HEAD_DIM, dtype=torch.int64)
    with pytest.raises(ValueError, match="TempoFitConfig"):
        LayerwiseKVMemory({"layers": [1]}, HEADS, HEAD_DIM)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# config


def test_config_defaults() -> None:
    config = TempoFitConfig(layers=[3, 5])
    assert config.capacity == 8
    assert config.beta == pytest.approx(1 / 128)
    assert (config.alpha, config.gap_unit, config.retrieval) == (None, "step", "k2k")
    assert (config.loading, config.rescale, config.max_prefix_len) == ("residual", True, 4096)
    assert (config.eps, config.backend) == (1e-6, "auto")
    assert config.bias_scale(256) == pytest.approx(2.0)  # x slope 1/2 = 1 nat per frame
    for name, field in TempoFitConfig.model_fields.items():
        assert field.description, f"{name} is undocumented"
    assert TempoFitConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"layers": []}, "layers"),
        ({"layers": [1, 1]}, "layers"),
        ({"layers": [-1]}, "layers"),
        ({"layers": list(range(65))}, "layers"),
        ({"layers": [True]}, "layers"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": 1025}, "capacity"),
        ({"beta": -0.1}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"alpha": 0.0}, "alpha"),
        ({"gap_unit": "minutes"}, "gap_unit"),
        ({"retrieval": "q2q"}, "retrieval"),
        ({"loading": "sum"}, "loading"),
        ({"max_prefix_len": 0}, "max_prefix_len"),
        ({"max_prefix_len": 10**7}, "max_prefix_len"),
        ({"eps": 0.0}, "eps"),
        ({"backend": "cuda"}, "backend"),
        ({"capcity": 4}, "capcity"),
    ],
)
def test_config_validation_errors_name_the_field(fields: dict, field_name: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        TempoFitConfig(**{"layers": [1], **fields})
    assert excinfo.value.errors()[0]["loc"][0] == field_name
    assert field_name in str(excinfo.value)


def test_config_is_frozen() -> None:
    config = TempoFitConfig(layers=[1])
    with pytest.raises(ValidationError):
        config.capacity = 4  # type: ignore[misc]


def test_push_frame_is_all_or_nothing_across_layers() -> None:
    memory = LayerwiseKVMemory(TempoFitConfig(layers=[1, 4], capacity=2), 2, 8)
    good = torch.randn(1, 2, 5, 8)
    bad = good.clone()
    bad[0, 1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"k contains NaN.*at layer 4"):
        memory.push_frame({1: (good, good), 4: (bad, good)}, 0.0)
    assert memory.num_frames(1) == 0 and memory.num_frames(4) == 0
    memory.push_frame({1: (good, good), 4: (good, good)}, 0.0)
    assert memory.num_frames(1) == 1 and memory.num_frames(4) == 1


def test_layer_ring_allocates_on_first_write_grows_and_restores_in_order() -> None:
    spec = RingSpec(
        batch_size=1,
        num_kv_heads=1,
        head_dim=2,
        capacity=3,
        max_prefix_len=40,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    ring = LayerRing(spec)
    assert ring.slot_len == 0 and ring.newest_time() is None
    assert ring.chronological().keys.shape == (1, 1, 0, 0, 2)
    slot_lens = []
    for step, seq_len in enumerate([4, 5, 2, 30, 40]):
        frame = torch.full((1, 1, seq_len, 2), float(step))
        ring.write(frame, frame, None, torch.tensor([float(step)]))
        slot_lens.append(ring.slot_len)
    # The first frame's length, then x1.25 rounded up to 16 tokens, capped at max_prefix_len.
    assert slot_lens == [4, 16, 16, 32, 40]
    oldest_first = ring.chronological()
    assert oldest_first.frame_time.tolist() == [[2.0, 3.0, 4.0]]
    assert oldest_first.keys[0, 0, :, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert oldest_first.token_valid.sum(-1).tolist() == [[2, 30, 40]]
    assert (ring.num_frames, ring.next_slot) == (3, 2)
    restored = LayerRing.restore(spec, ring.num_frames, ring.next_slot, oldest_first)
    for name in ("keys", "values", "token_valid", "frame_time"):
        want = getattr(ring.frames_in_slot_order(), name)
        assert torch.equal(getattr(restored.frames_in_slot_order(), name), want)
    restored.clear()
    assert restored.num_frames == 0 and restored.chronological().keys.shape[2] == 0
