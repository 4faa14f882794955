"""TempoFit on frozen transformers models: exactness, reversibility, FIFO/bias semantics, errors.

Fast tests use tiny random models of every supported family; ``slow`` tests use SmolLM2-135M.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from model_checks import (
    Model,
    hook_count,
    logits_of,
    robot_frames,
    two_steps_exact_when_empty_and_reversible,
)
from torch import Tensor
from transformers import DynamicCache

from memory import SimClock, TempoFitConfig
from policies import TempoFit, calibrate_layers, default_layers
from policies.attention_adapters import adapter_for, supported_model_types
from policies.models import tiny_random_model
from policies.tempofit import LoadEvent

FAMILIES = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
VOCAB = 128
PREFIX = 6
SUFFIX = 4


def frame(seed: int, batch: int = 1, length: int = PREFIX + SUFFIX) -> Tensor:
    """(batch, length) random token ids, reproducible by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def run_steps(
    tempofit: TempoFit, model: Model, frames: list[Tensor], times: list[Any] | None = None
) -> Tensor:
    """Run each frame as one step (prefix PREFIX); returns the last step's logits."""
    logits = torch.empty(0)
    for index, input_ids in enumerate(frames):
        t = None if times is None else times[index]
        with tempofit.step(prefix_len=PREFIX, t=t):
            logits = logits_of(model, input_ids)
    return logits


@pytest.fixture(scope="module")
def models() -> dict[str, Model]:
    return {family: tiny_random_model(family) for family in FAMILIES}


@pytest.fixture
def llama(models: dict[str, Model]) -> Iterator[Model]:
    model = models["llama"]
    yield model
    assert hook_count(model) == 0, "a test left hooks on the shared model"


@pytest.fixture
def qwen3(models: dict[str, Model]) -> Iterator[Model]:
    model = models["qwen3"]
    yield model
    assert hook_count(model) == 0, "a test left hooks on the shared model"


# ------------------------------------------------------------------------ exactness, reversal


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_memory_is_bit_exact_and_remove_restores(
    models: dict[str, Model], family: str
) -> None:
    model = models[family]
    first, second = frame(0), frame(1)
    reference = logits_of(model, first)
    tempofit = TempoFit(model, TempoFitConfig(layers=[1, 2]))
    try:
        with tempofit.step(prefix_len=PREFIX):
            assert torch.equal(logits_of(model, first), reference)
        assert tempofit.memory.num_frames(1) == 1
        with tempofit.step(prefix_len=PREFIX):
            changed = logits_of(model, first)
        assert not torch.allclose(changed, reference), "a stored frame must change the logits"
        # Outside a step nothing is loaded, even with frames in memory.
        assert torch.equal(logits_of(model, first), reference)
        with tempofit.step(prefix_len=PREFIX):
            logits_of(model, second)
    finally:
        tempofit.remove()
    assert hook_count(model) == 0
    assert torch.equal(logits_of(model, first), reference)


@pytest.mark.parametrize("mode", [{"retrieval": "q2k"}, {"loading": "concat"}, {"rescale": False}])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_ablation_modes_exact_when_empty_and_reversible(
    models: dict[str, Model], family: str, mode: dict[str, Any]
) -> None:
    _, with_memory, reference = two_steps_exact_when_empty_and_reversible(
        models[family], TempoFitConfig(layers=[0, 2], **mode), [(frame(2), PREFIX)] * 2
    )
    assert not torch.allclose(with_memory, reference)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_concat_attention_agrees_between_eager_and_sdpa(family: str) -> None:
    """The widened mask is built as an additive float mask for eager attention and a boolean
    one for SDPA; both must give the same result."""
    results = []
    for implementation in ("eager", "sdpa"):
        model = tiny_random_model(family, attn_implementation=implementation)
        tempofit = TempoFit(model, TempoFitConfig(layers=[0, 1], loading="concat"))
        try:
            results.append(run_steps(tempofit, model, [frame(0), frame(1), frame(2)]))
        finally:
            tempofit.remove()
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", [{"retrieval": "q2k"}, {"loading": "concat"}])
def test_gemma2_eager_sliding_ablations(models: dict[str, Model], mode: dict[str, Any]) -> None:
    model = models["gemma2"]  # eager attention with softcapping; sliding window 8 < 10 tokens
    _, with_memory, reference = two_steps_exact_when_empty_and_reversible(
        model, TempoFitConfig(layers=[0, 1], **mode), [(frame(2), PREFIX)] * 2
    )
    assert torch.isfinite(with_memory).all()
    assert not torch.allclose(with_memory, reference)


def test_concat_is_refused_where_unsupported(models: dict[str, Model]) -> None:
    with pytest.raises(ValueError, match=r"concat.*gemma3"):
        TempoFit(models["gemma3"], TempoFitConfig(layers=[1], loading="concat"))
    assert hook_count(models["gemma3"]) == 0


def test_concat_keeps_history_out_of_the_kv_cache(llama: Model) -> None:
    tempofit = TempoFit(llama, TempoFitConfig(layers=[1], loading="concat"))
    try:
        run_steps(tempofit, llama, [frame(0)])
        with tempofit.step(prefix_len=PREFIX), torch.no_grad():
            out = llama(input_ids=frame(1), use_cache=True)
            assert out.cache.get_seq_length() == PREFIX + SUFFIX
            follow_up = llama(input_ids=frame(2, length=1), cache=out.cache)
        assert follow_up.cache.get_seq_length() == PREFIX + SUFFIX + 1
    finally:
        tempofit.remove()


# ------------------------------------------------------------------------ where K/V change


def attention_inputs(model: Model) -> tuple[list[Any], list[Any]]:
    """Hooks recording every layer's self_attn call (kwargs); returns (records, handles)."""
    adapter = adapter_for(model)
    records: list[Any] = [None] * adapter.geometry(model).num_layers
    handles = []
    for layer in range(len(records)):

        def record(module: Model, args: Any, kwargs: dict[str, Any], layer: int = layer) -> None:
            records[layer] = dict(kwargs)

        attention = adapter.self_attention(model, layer)
        handles.append(attention.register_forward_pre_hook(record, with_kwargs=True))
    return records, handles


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_only_selected_layers_and_only_prefix_tokens_change(
    models: dict[str, Model], family: str
) -> None:
    """Each layer's cached (post-RoPE) K/V is compared with the same attention module re-run
    alone on the same input: unselected layers match exactly, selected layers match on the
    suffix, and their prefix values are exactly the loaded ``v_hat``."""
    # A sliding-window cache would keep only the last tokens; widen the window to see them all.
    model = tiny_random_model(family, sliding_window=64) if family == "gemma3" else models[family]
    selected = [1, 3]
    tempofit = TempoFit(model, TempoFitConfig(layers=selected))
    events: dict[int, LoadEvent] = {}
    tempofit.load_observers.append(lambda event: events.__setitem__(event.layer, event))
    records, handles = attention_inputs(model)
    adapter = adapter_for(model)
    try:
        run_steps(tempofit, model, [frame(0), frame(1)])
        with tempofit.step(prefix_len=PREFIX), torch.no_grad():
            cache = model(input_ids=frame(2), use_cache=True).cache
        for handle in handles:
            handle.remove()
        for layer, kwargs in enumerate(records):
            fresh: Any = DynamicCache(config=model.config)
            with torch.no_grad():  # outside a step: the plain attention
                adapter.self_attention(model, layer)(**{**kwargs, "cache": fresh})
            wrapped_keys, wrapped_values = cache.layers[layer].keys, cache.layers[layer].values
            plain_keys, plain_values = fresh.layers[layer].keys, fresh.layers[layer].values
            if layer not in selected:
                assert torch.equal(wrapped_keys, plain_keys)
                assert torch.equal(wrapped_values, plain_values)
                continue
            assert torch.equal(wrapped_keys[:, :, PREFIX:], plain_keys[:, :, PREFIX:])
            assert torch.equal(wrapped_values[:, :, PREFIX:], plain_values[:, :, PREFIX:])
            assert not torch.allclose(wrapped_keys[:, :, :PREFIX], plain_keys[:, :, :PREFIX])
            assert torch.equal(wrapped_values[:, :, :PREFIX], events[layer].v_hat)
            assert torch.equal(plain_values[:, :, :PREFIX], events[layer].v_t)
    finally:
        for handle in handles:
            handle.remove()
        tempofit.remove()


def test_prefix_plus_suffix_forward_pushes_only_the_prefix(llama: Model) -> None:
    tempofit = TempoFit(llama, TempoFitConfig(layers=[2]))
    try:
        run_steps(tempofit, llama, [frame(0)])
        k_hist, v_hist, _, valid = tempofit.memory.history(2)
        assert k_hist.shape[2] == PREFIX and bool(valid.all())
    finally:
        tempofit.remove()
    prefix_only = TempoFit(llama, TempoFitConfig(layers=[2]))
    try:
        with prefix_only.step(prefix_len=PREFIX):
            logits_of(llama, frame(0)[:, :PREFIX])
        k_ref, v_ref, _, _ = prefix_only.memory.history(2)
    finally:
        prefix_only.remove()
    torch.testing.assert_close(k_hist, k_ref)
    torch.testing.assert_close(v_hist, v_ref)


def test_inputs_embeds_and_positional_input_ids_work(llama: Model) -> None:
    input_ids = frame(3)
    embeds = llama.get_input_embeddings()(input_ids)
    via_ids = TempoFit(llama, TempoFitConfig(layers=[1]))
    via_embeds = TempoFit(llama, TempoFitConfig(layers=[1]))
    try:
        run_steps(via_ids, llama, [frame(0)])
        with via_embeds.step(prefix_len=PREFIX), torch.no_grad():
            llama(inputs_embeds=llama.get_input_embeddings()(frame(0)))
        with via_ids.step(prefix_len=PREFIX), torch.no_grad():
            expected = llama(input_ids).logits  # positional
        with via_embeds.step(prefix_len=PREFIX), torch.no_grad():
            actual = llama(inputs_embeds=embeds).logits
        assert via_embeds.memory.num_frames(1) == 2
        torch.testing.assert_close(actual, expected)
    finally:
        via_ids.remove()
        via_embeds.remove()


def test_cached_decoding_in_a_step_passes_through(llama: Model) -> None:
    tempofit = TempoFit(llama, TempoFitConfig(layers=[1, 2]))
    events: list[LoadEvent] = []
    tempofit.load_observers.append(events.append)
    try:
        run_steps(tempofit, llama, [frame(0)])
        events.clear()
        with tempofit.step(prefix_len=PREFIX), torch.no_grad():
            generated = llama.generate(frame(1), max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert generated.shape[1] == PREFIX + SUFFIX + 3
        assert sorted(e.layer for e in events) == [1, 2], "one loading per layer per step"
        assert tempofit.memory.num_frames(1) == 2
        assert tempofit.memory.slot_len(1) == PREFIX
    finally:
        tempofit.remove()


# ------------------------------------------------------------------------ FIFO and bias semantics


# One selected layer in these two tests: the raw K/V a frame stores at a later selected layer
# depend on what an earlier selected layer loaded while that frame ran, i.e. on older frames.
# Equal up to float rounding: the retrieval softmax sums over a different number (and order)
# of history tokens in the two memories.


def test_huge_beta_equals_memory_of_latest_frame_only(llama: Model) -> None:
    frames = [frame(seed) for seed in range(4)]
    query = frame(10)
    config = TempoFitConfig(layers=[2], beta=1e4)
    full = TempoFit(llama, config)
    try:
        run_steps(full, llama, frames, times=[0.0, 1.0, 2.0, 3.0])
        full_logits = run_steps(full, llama, [query], times=[4.0])
    finally:
        full.remove()
    latest = TempoFit(llama, config)
    try:
        run_steps(latest, llama, frames[-1:], times=[3.0])
        latest_logits = run_steps(latest, llama, [query], times=[4.0])
    finally:
        latest.remove()
    torch.testing.assert_close(full_logits, latest_logits, rtol=0, atol=1e-6)
    assert not torch.allclose(full_logits, logits_of(llama, query))


def test_fifo_keeps_only_the_last_capacity_frames(llama: Model) -> None:
    capacity, extra = 3, 2
    frames = [frame(seed) for seed in range(capacity + extra)]
    times = [float(i) for i in range(capacity + extra)]
    query = frame(20)
    config = TempoFitConfig(layers=[1], capacity=capacity)
    overfull = TempoFit(llama, config)
    try:
        run_steps(overfull, llama, frames, times)
        overfull_logits = run_steps(overfull, llama, [query], times=[10.0])
    finally:
        overfull.remove()
    last_only = TempoFit(llama, config)
    try:
        run_steps(last_only, llama, frames[extra:], times[extra:])
        last_logits = run_steps(last_only, llama, [query], times=[10.0])
    finally:
        last_only.remove()
    torch.testing.assert_close(overfull_logits, last_logits, rtol=0, atol=1e-6)


def test_batch_rows_are_independent_sessions(qwen3: Model) -> None:
    sessions = [[frame(1), frame(2), frame(3)], [frame(4), frame(5), frame(6)]]
    times = [[0.0, 1.0, 2.0], [0.0, 3.0, 7.0]]
    config = TempoFitConfig(layers=[1, 2], beta=0.05)
    batched = TempoFit(qwen3, config, batch_size=2)
    try:
        for step in range(3):
            input_ids = torch.cat([sessions[0][step], sessions[1][step]])
            t = torch.tensor([times[0][step], times[1][step]])
            with batched.step(prefix_len=PREFIX, t=t):
                batched_logits = logits_of(qwen3, input_ids)
    finally:
        batched.remove()
    for session in range(2):
        alone = TempoFit(qwen3, config)
        try:
            alone_logits = run_steps(alone, qwen3, sessions[session], times[session])
        finally:
            alone.remove()
        torch.testing.assert_close(batched_logits[session : session + 1], alone_logits)


def test_default_time_is_the_step_counter_or_the_clock(llama: Model) -> None:
    counted = TempoFit(llama, TempoFitConfig(layers=[1]))
    clock = SimClock(100.0)
    timed = TempoFit(llama, TempoFitConfig(layers=[1], gap_unit="seconds"), clock=clock)
    try:
        run_steps(counted, llama, [frame(0), frame(1)])
        for _ in range(2):
            with timed.step(prefix_len=PREFIX):
                logits_of(llama, frame(0))
            clock.advance(0.5)
        assert counted.steps_pushed == 2
        assert counted.memory.state_dict()["layer.1.frame_time"].tolist() == [[0.0, 1.0]]
        assert timed.memory.state_dict()["layer.1.frame_time"].tolist() == [[100.0, 100.5]]
        counted.reset()
        assert counted.steps_pushed == 0 and counted.memory.num_frames(1) == 0
    finally:
        counted.remove()
        timed.remove()


# ------------------------------------------------------------------------ errors


def test_bad_inputs_raise_clear_errors(llama: Model) -> None:
    with pytest.raises(ValueError, match=r"out of range.*4 layers"):
        TempoFit(llama, TempoFitConfig(layers=[1, 4]))
    with pytest.raises(ValueError, match="TempoFitConfig"):
        TempoFit(llama, {"layers": [1]})  # type: ignore[arg-type]
    tempofit = TempoFit(llama, TempoFitConfig(layers=[1], max_prefix_len=64))
    try:
        for bad in (0, -3):
            with pytest.raises(ValueError, match="prefix_len must be > 0"), tempofit.step(bad):
                pass
        with pytest.raises(ValueError, match="prefix_len must be an int"), tempofit.step(True):
            pass
        with pytest.raises(ValueError, match="max_prefix_len"), tempofit.step(65):
            pass
        too_long = pytest.raises(ValueError, match=r"prefix_len 11 > sequence length 10")
        with too_long, tempofit.step(prefix_len=11):
            logits_of(llama, frame(0))
        assert tempofit.memory.num_frames(1) == 0
        run_steps(tempofit, llama, [frame(0)], times=[5.0])
        backwards = pytest.raises(ValueError, match=r"time went backwards for session 0")
        with backwards, tempofit.step(prefix_len=PREFIX, t=4.0):
            pass
        nested = pytest.raises(ValueError, match="does not nest")
        with tempofit.step(PREFIX, t=6.0), nested, tempofit.step(PREFIX, t=6.0):
            pass
        with pytest.raises(ValueError, match="batch size 2"), tempofit.step(PREFIX, t=7.0):
            logits_of(llama, frame(0, batch=2))
        assert tempofit.memory.num_frames(1) == 1
    finally:
        tempofit.remove()
    with pytest.raises(ValueError, match="removed"), tempofit.step(PREFIX):
        pass


def test_unsupported_family_is_rejected() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match=r"unsupported model family 'gpt2'"):
        TempoFit(gpt2, TempoFitConfig(layers=[0]))
    assert {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"} <= set(
        supported_model_types()
    )


def test_step_that_raises_pushes_nothing(llama: Model) -> None:
    tempofit = TempoFit(llama, TempoFitConfig(layers=[1, 2]))
    try:
        run_steps(tempofit, llama, [frame(0)])
        state = tempofit.memory.state_dict()
        failing = pytest.raises(RuntimeError, match="controller failed")
        with failing, tempofit.step(prefix_len=PREFIX):
            logits_of(llama, frame(1))
            raise RuntimeError("controller failed")
        assert tempofit.steps_pushed == 1
        after = tempofit.memory.state_dict()
        assert after.keys() == state.keys()
        for key, value in state.items():
            assert (
                torch.equal(value, after[key]) if isinstance(value, Tensor) else value == after[key]
            )
        # A prefix forward that fails (here: bad token ids) pushes nothing even if caught.
        with tempofit.step(prefix_len=PREFIX), pytest.raises(IndexError):
            logits_of(llama, frame(1) + VOCAB)
        assert tempofit.steps_pushed == 1
        # The step after a failed one works normally and is frame 2 at t = 1.
        run_steps(tempofit, llama, [frame(2)])
        assert tempofit.memory.num_frames(1) == 2
    finally:
        tempofit.remove()


def test_only_a_steps_first_prefix_forward_loads_and_pushes(llama: Model) -> None:
    """A step without a forward pushes nothing; after the prefix forward has finished, another
    forward from position 0 in the same step runs the plain model and pushes nothing more."""
    plain = logits_of(llama, frame(1))
    tempofit = TempoFit(llama, TempoFitConfig(layers=[1, 2]))
    try:
        run_steps(tempofit, llama, [frame(0)])
        with tempofit.step(prefix_len=PREFIX):
            pass
        assert tempofit.steps_pushed == 1
        with tempofit.step(prefix_len=PREFIX):
            loaded = logits_of(llama, frame(1))
            again = logits_of(llama, frame(1))
        assert not torch.equal(loaded, plain)  # the memory changed the prefix forward
        assert torch.equal(again, plain)
        assert tempofit.steps_pushed == 2 and tempofit.memory.num_frames(1) == 2
    finally:
        tempofit.remove()


# ------------------------------------------------------------------------ layer selection


def test_default_layers_pick_early_to_middle_layers() -> None:
    assert default_layers(30) == [6, 9, 11, 14]
    assert default_layers(32) == [6, 9, 12, 15]
    assert default_layers(6, k=4) == [1, 2, 3, 4]
    assert default_layers(4, k=4) == [0, 1, 2, 3]
    assert default_layers(1, k=1) == [0]
    for num_layers in range(1, 50):
        for k in range(1, min(num_layers, 6) + 1):
            layers = default_layers(num_layers, k)
            assert len(layers) == k and layers == sorted(set(layers))
            assert layers[0] >= 0 and layers[-1] < num_layers
    with pytest.raises(ValueError, match="k must be"):
        default_layers(4, k=5)
    with pytest.raises(ValueError, match="num_layers"):
        default_layers(0)


def test_calibrate_layers_ranks_candidates(llama: Model) -> None:
    frames = [frame(seed) for seed in range(3)]
    result = calibrate_layers(llama, frames, candidates=[0, 1, 3], k=2, prefix_len=PREFIX)
    assert sorted(entry.layer for entry in result.ranking) == [0, 1, 3]
    scores = [entry.score for entry in result.ranking]
    assert scores == sorted(scores, reverse=True)
    for entry in result.ranking:
        assert 0.0 <= entry.concentration <= 1.0
        assert entry.influence > 0.0
    assert result.layers == sorted(entry.layer for entry in result.ranking[:2])
    with pytest.raises(ValueError, match="at least 2 frames"):
        calibrate_layers(llama, frames[:1])
    with pytest.raises(ValueError, match="candidates"):
        calibrate_layers(llama, frames, candidates=[7])


# ------------------------------------------------------------------------ SmolLM2 (real model)


@pytest.fixture(scope="module")
def smollm2() -> tuple[Model, Any]:
    from policies import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def smollm2_frames(smollm2: tuple[Model, Any]) -> list[tuple[Tensor, int]]:
    return robot_frames(smollm2[1])


@pytest.mark.slow
def test_smollm2_memory_is_exact_when_empty_changes_logits_and_is_reversible(
    smollm2: tuple[Model, Any], smollm2_frames: list[tuple[Tensor, int]]
) -> None:
    model, _ = smollm2
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    tempofit, with_memory, reference = two_steps_exact_when_empty_and_reversible(
        model, TempoFitConfig(layers=default_layers(30)), smollm2_frames
    )
    assert tempofit.memory.num_frames(6) == 2
    assert (with_memory - reference).abs().max() > 1e-3
    assert torch.isfinite(with_memory).all()


@pytest.mark.slow
def test_smollm2_q2k_and_generation_inside_a_step(
    smollm2: tuple[Model, Any], smollm2_frames: list[tuple[Tensor, int]]
) -> None:
    model, tokenizer = smollm2
    (first, first_prefix), _ = smollm2_frames
    tempofit = TempoFit(model, TempoFitConfig(layers=[6, 9], retrieval="q2k"))
    try:
        with tempofit.step(prefix_len=first_prefix):
            logits_of(model, first)
        with tempofit.step(prefix_len=first_prefix), torch.no_grad():
            generated = model.generate(
                first, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id
            )
        assert generated.shape[1] == first.shape[1] + 4
        assert tempofit.memory.num_frames(6) == 2
    finally:
        tempofit.remove()
    assert hook_count(model) == 0


def test_memory_made_under_inference_mode_can_be_reset_and_pushed_outside_it() -> None:
    """A control loop steps under torch.inference_mode(); reset() or a step outside it must
    still work (inference tensors could not be updated in place)."""
    model = tiny_random_model("llama", seed=0)
    tf = TempoFit(model, TempoFitConfig(layers=[1], capacity=2))
    frame = torch.randint(0, 128, (1, 8))
    with torch.inference_mode(), tf.step(prefix_len=5):
        model(frame)
    tf.reset()
    with torch.no_grad(), tf.step(prefix_len=5):
        model(frame)
    with torch.inference_mode(), tf.step(prefix_len=5):
        model(frame)
    assert tf.memory.num_frames(1) == 2
    state = tf.state_dict()
    tf.load_state_dict(state)
    tf.reset()
    tf.remove()
