"""EpisodicLM (EM-LLM on a frozen LM): exactness, a dense reference, no duplicate keys, errors,
reversibility, and a passkey test on SmolLM2 (slow).

Fast tests use tiny random models; the dense reference recomputes every query one at a time,
layer by layer, with the key set and packed positions that the memory scheme prescribes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from envs.tasks.passkey import passkey_prompt
from kv_store import LocalStore
from memory.episodic import EpisodicConfig, EventStore
from policies import EpisodicLM
from policies.episodic_lm import sliding_window_baseline
from policies.episodic_plot import plot_events
from policies.models import tiny_random_model
from policies.rope import rotate_half

Model = Any  # a transformers causal LM (typed loosely: its attributes are dynamic)
VOCAB = 128


def small_config(**overrides: Any) -> EpisodicConfig:
    """A config on the scale of the tiny models: events of 2-8 tokens, windows of 16."""
    values: dict[str, Any] = {
        "n_init": 4,
        "n_local": 16,
        "budget": 16,
        "chunk_size": 8,
        "min_event_size": 2,
        "max_event_size": 8,
        "surprise_window": 8,
        "n_repr": 2,
        "k_similar": 2,
        "k_contiguous": 1,
    }
    values.update(overrides)
    return EpisodicConfig(**values)


def full_budget(chunk_size: int) -> EpisodicConfig:
    """A budget and k_s that cover every event of a 200-token stream."""
    return small_config(chunk_size=chunk_size, budget=1024, k_similar=1024)


def tokens(seed: int, length: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, length), generator=generator)


def plain_logits(model: Model, input_ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits[0]


def instance_forwards(model: Model) -> int:
    return sum("forward" in m.__dict__ for m in model.modules())


# Gemma 3 as in the 270M model: one KV head (multi-query) and sliding-window layers (window 8
# here) around full-attention ones; Gemma 2 adds attention logit soft-capping.
GEMMA3_LAYERS = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


@pytest.fixture(scope="module")
def models() -> dict[str, Model]:
    found = {
        family: tiny_random_model(family, max_position_embeddings=1024)
        for family in ("llama", "qwen2", "qwen3", "gemma", "gemma2")
    }
    found["gemma3"] = tiny_random_model(
        "gemma3", max_position_embeddings=1024, num_key_value_heads=1, layer_types=GEMMA3_LAYERS
    )
    return found


@pytest.fixture
def llama(models: dict[str, Model]) -> Iterator[Model]:
    model = models["llama"]
    yield model
    assert instance_forwards(model) == 0, "a test left a wrapped forward on the shared model"


# ------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"])
def test_input_within_window_equals_plain_model(models: dict[str, Model], family: str) -> None:
    model = models[family]
    input_ids = tokens(0, 19)  # n_init + n_local = 20 tokens never leave the window
    lm = EpisodicLM(model, small_config())
    try:
        logits = lm.feed(input_ids, return_logits=True)
    finally:
        lm.remove()
    assert len(lm.events()) == 0
    torch.testing.assert_close(logits, plain_logits(model, input_ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("chunk_size", [3, 8, 16])
def test_full_budget_equals_dense_attention_for_any_chunk_size(
    models: dict[str, Model], family: str, chunk_size: int
) -> None:
    """With every event retrieved, the packed positions are the absolute ones: the dense
    reference of the position scheme is the plain model's full causal attention."""
    model = models[family]
    input_ids = tokens(1, 200)
    lm = EpisodicLM(model, full_budget(chunk_size))
    try:
        logits = lm.feed(input_ids, return_logits=True)
    finally:
        lm.remove()
    assert len(lm.events()) > 10, "the stream must have formed events"
    sizes = {event_id: end - start for event_id, start, end in lm.events()}
    for record in lm.retrievals:  # every event formed so far is attended at every layer
        for ids in record.events.values():
            assert sum(sizes[i] for i in ids) == record.local_start - record.n_sinks
    torch.testing.assert_close(logits, plain_logits(model, input_ids), rtol=0, atol=1e-5)


def dense_reference(model: Model, input_ids: Tensor, lm: EpisodicLM) -> Tensor:
    """Logits (T, V) recomputed one query at a time, without any retrieval machinery.

    For query t (in a chunk whose record says sinks ``[0, n_sinks)``, local window
    ``[local_start, start)`` and layer-l events ``E_l``) layer l attends to the tokens
    ``sinks + (tokens of E_l, in order) + [local_start, t]`` at positions ``0, 1, ...`` in that
    order, with one softmax. Each token's pre-RoPE K/V at layer l is computed once, from its
    own hidden state, exactly as a causal LM does.
    """
    decoder = model.model
    geometry = lm.geometry
    spans = {event_id: (start, end) for event_id, start, end in lm.events()}
    keys: dict[int, list[Tensor]] = {layer: [] for layer in range(geometry.num_layers)}
    values: dict[int, list[Tensor]] = {layer: [] for layer in range(geometry.num_layers)}
    out = []
    with torch.no_grad():
        for record in lm.retrievals:
            for t in range(record.start, record.end):
                hidden = decoder.embed_tokens(input_ids[:, t : t + 1])  # (1, 1, hidden)
                for layer, block in enumerate(decoder.layers):
                    attention = block.self_attn
                    x = block.input_layernorm(hidden)
                    q = attention.q_proj(x).view(geometry.num_heads, geometry.head_dim)
                    keys[layer].append(attention.k_proj(x).view(geometry.num_kv_heads, -1))
                    values[layer].append(attention.v_proj(x).view(geometry.num_kv_heads, -1))
                    order = list(range(record.n_sinks))
                    for event_id in record.events.get(layer, []):
                        order += list(range(*spans[event_id]))
                    order += list(range(record.local_start, t + 1))
                    assert len(order) == len(set(order))
                    k = torch.stack([keys[layer][i] for i in order], dim=1)  # (H, S, D)
                    v = torch.stack([values[layer][i] for i in order], dim=1)
                    cos, sin = decoder.rotary_emb(v[None], torch.arange(len(order))[None])
                    k = k * cos[0] + rotate_half(k) * sin[0]
                    q = q * cos[0, -1] + rotate_half(q) * sin[0, -1]  # (Hq, D)
                    k = k.repeat_interleave(geometry.group_size, dim=0)  # (Hq, S, D)
                    v = v.repeat_interleave(geometry.group_size, dim=0)
                    weights = torch.softmax((k @ q[:, :, None])[..., 0] * attention.scaling, -1)
                    mixed = (weights[:, :, None] * v).sum(1).reshape(1, 1, -1)
                    hidden = hidden + attention.o_proj(mixed)
                    hidden = hidden + block.mlp(block.post_attention_layernorm(hidden))
                out.append(model.lm_head(decoder.norm(hidden))[0, 0])
    return torch.stack(out)


def test_partial_retrieval_equals_dense_reference(llama: Model) -> None:
    input_ids = tokens(2, 120)
    lm = EpisodicLM(llama, small_config())
    try:
        logits = lm.feed(input_ids, return_logits=True)
    finally:
        lm.remove()
    retrieved = [len(ids) for r in lm.retrievals for ids in r.events.values()]
    assert retrieved and 0 < max(retrieved) < len(lm.events()), "retrieval must be selective"
    torch.testing.assert_close(logits, dense_reference(llama, input_ids, lm), rtol=0, atol=1e-4)


def test_generate_with_full_budget_equals_plain_greedy(llama: Model) -> None:
    input_ids = tokens(3, 60)
    lm = EpisodicLM(llama, full_budget(8))
    try:
        generated = lm.generate(input_ids, max_new_tokens=12)
    finally:
        lm.remove()
    expected = input_ids
    for _ in range(12):
        next_token = plain_logits(llama, expected)[-1].argmax()
        expected = torch.cat([expected, next_token.view(1, 1)], dim=1)
    assert torch.equal(generated, expected)
    assert [r.phase for r in lm.retrievals].count("decode") == 11


@pytest.mark.parametrize(
    ("family", "n_local"),
    [("gemma", 16), ("gemma2", 16), ("gemma3", 16), ("gemma2", 4), ("gemma3", 4)],
)
def test_gemma_families_with_full_budget_equal_the_plain_model(
    models: dict[str, Model], family: str, n_local: int
) -> None:
    """Gemma's scaled embeddings and query scaling, Gemma 2's logit soft-capping, Gemma 3's
    q/k norms, single KV head and per-layer-type rotary tables, and the sliding-window layers
    of both (window 8: they keep their window also when the local window is shorter) match the
    plain model."""
    model = models[family]
    input_ids = tokens(11, 120)
    config = small_config(
        n_local=n_local, chunk_size=4, budget=1024, k_similar=1024, max_event_size=4
    )
    lm = EpisodicLM(model, config)
    try:
        logits = lm.feed(input_ids, return_logits=True)
    finally:
        lm.remove()
    assert len(lm.events()) > 5, "the stream must have formed events"
    torch.testing.assert_close(logits, plain_logits(model, input_ids), rtol=0, atol=1e-4)


def test_gemma3_sliding_layers_keep_their_window_and_full_layers_retrieve(
    models: dict[str, Model],
) -> None:
    model = models["gemma3"]
    window = model.config.sliding_window
    sliding = [i for i, kind in enumerate(GEMMA3_LAYERS) if kind == "sliding_attention"]
    lm = EpisodicLM(model, small_config(n_local=4, chunk_size=4, max_event_size=4))
    reach: dict[int, int] = {}

    def observe(layer: int, query_index: Tensor, key_index: Tensor, visible: Tensor) -> None:
        distance = query_index[:, None] - key_index[None, :]
        reach[layer] = max(reach.get(layer, 0), int(distance[visible].max()))
        if layer in sliding:  # every key of its window, nothing older
            expected = torch.clamp(query_index + 1, max=window)
            assert torch.equal(visible.sum(1), expected), f"layer {layer}"

    lm.attention_observer = observe
    try:
        lm.generate(tokens(12, 150), max_new_tokens=10)
    finally:
        lm.remove()
    assert lm.memory_layers == [1, 3]
    assert all(reach[layer] == window - 1 for layer in sliding)
    assert all(reach[layer] > 4 * window for layer in lm.memory_layers), "events reach back"
    assert all(record.events[layer] == [] for record in lm.retrievals for layer in sliding)
    assert any(record.events[1] for record in lm.retrievals)
    event = lm.store.get(lm.events()[0][0])
    assert event is not None
    assert sorted(event.tensors) == ["layer.1.k", "layer.1.v", "layer.3.k", "layer.3.v"]
    assert event.tensors["layer.1.k"].shape[0] == 1, "one KV head (multi-query)"


# ------------------------------------------------------------------------ no duplicate keys


@pytest.mark.parametrize("retrieve_every", [1, 3])
def test_every_query_sees_each_past_token_at_most_once(llama: Model, retrieve_every: int) -> None:
    config = small_config(budget=24, k_similar=3, k_contiguous=2)
    lm = EpisodicLM(llama, config, retrieve_every=retrieve_every)
    seen: list[tuple[int, int]] = []
    bound = config.n_init + config.budget + config.n_local + config.chunk_size

    def observe(layer: int, query_index: Tensor, key_index: Tensor, visible: Tensor) -> None:
        assert key_index.numel() <= bound, "a position beyond n_init + budget + n_local + chunk"
        for row, query in enumerate(query_index.tolist()):
            visible_keys = key_index[visible[row]].tolist()
            assert len(visible_keys) == len(set(visible_keys)), f"query {query} sees a key twice"
            assert max(visible_keys) == query and min(visible_keys) >= 0
        seen.append((layer, int(query_index[0])))

    lm.attention_observer = observe
    try:
        lm.generate(tokens(4, 150), max_new_tokens=20)
    finally:
        lm.remove()
    assert len(lm.events()) > 5
    assert len(seen) == len(lm.retrievals) * llama.config.num_hidden_layers


# ------------------------------------------------------------------------ traces and store


def test_traces_for_plotting(llama: Model, tmp_path: Any) -> None:
    input_ids = tokens(5, 150)
    lm = EpisodicLM(llama, small_config(), similarity_layers=[0, 3])
    try:
        lm.feed(input_ids)
    finally:
        lm.remove()
    assert lm.surprise.shape == (150,) and lm.surprise[0] == 0
    assert len(lm.boundaries_before) == len(lm.boundaries_after)
    events = lm.events()
    assert events[0][1] == 4, "the first event starts after the sinks"
    assert all(a[2] == b[1] for a, b in itertools.pairwise(events)), "contiguous"
    starts = {start for _, start, _ in events}
    assert set(lm.boundaries_after) <= starts
    path = plot_events(lm, tmp_path / "events.png")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_events_write_through_to_a_backing_store(llama: Model) -> None:
    backing = LocalStore(namespace="episodic-test")
    lm = EpisodicLM(llama, small_config(), store=backing)
    try:
        lm.feed(tokens(6, 80))
    finally:
        lm.remove()
    first = lm.events()[0][0]
    record = backing.get_tensors(f"episodic/event/{first}")
    assert record is not None and "t.layer.0.k" in record[0]


def test_reset_forgets_the_stream(llama: Model) -> None:
    store = EventStore(max_events=8)
    lm = EpisodicLM(llama, small_config(), store=store)
    try:
        first = lm.generate(tokens(7, 90), max_new_tokens=4)
        assert len(store) == 8, "the store's bound applies"
        lm.reset()
        assert len(store) == 0 and lm.num_tokens == 0 and lm.retrievals == []
        assert torch.equal(lm.generate(tokens(7, 90), max_new_tokens=4), first)
    finally:
        lm.remove()


def test_sliding_window_baseline_forms_no_events(llama: Model) -> None:
    lm = sliding_window_baseline(llama, small_config())
    try:
        lm.feed(tokens(8, 100))
    finally:
        lm.remove()
    assert lm.events() == [] and lm.config.n_local == 32


# ------------------------------------------------------------------------ errors, reversal


def test_remove_restores_the_model_exactly(llama: Model) -> None:
    input_ids = tokens(9, 30)
    before = plain_logits(llama, input_ids)
    weights = {k: v.clone() for k, v in llama.state_dict().items()}
    lm = EpisodicLM(llama, small_config())
    assert instance_forwards(llama) == llama.config.num_hidden_layers
    assert torch.equal(plain_logits(llama, input_ids), before), "unarmed wrappers change nothing"
    lm.generate(input_ids, max_new_tokens=3)
    lm.remove()
    lm.remove()  # idempotent
    assert instance_forwards(llama) == 0
    assert all(torch.equal(v, weights[k]) for k, v in llama.state_dict().items())
    assert torch.equal(plain_logits(llama, input_ids), before)
    with pytest.raises(RuntimeError, match="removed"):
        lm.generate(input_ids, max_new_tokens=1)


def test_stacked_wrappers_must_be_removed_in_reverse_order(llama: Model) -> None:
    input_ids = tokens(10, 60)
    inner = EpisodicLM(llama, small_config())
    outer = sliding_window_baseline(llama, small_config())
    try:
        with pytest.raises(RuntimeError, match="wrapped again"):
            inner.remove()
        window_logits = outer.feed(input_ids, return_logits=True)  # inner passes through
        episodic_logits = inner.feed(input_ids, return_logits=True)  # outer passes through
    finally:
        outer.remove()
        inner.remove()
    alone = sliding_window_baseline(llama, small_config())
    try:
        torch.testing.assert_close(alone.feed(input_ids, return_logits=True), window_logits)
    finally:
        alone.remove()
    assert not torch.allclose(window_logits, episodic_logits)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(8, dtype=torch.long), "batch size 1"),
        (torch.zeros(2, 8, dtype=torch.long), "batch size 1"),
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
        (torch.zeros(1, 8), "integer"),
        (torch.full((1, 8), VOCAB), "lie in"),
    ],
)
def test_bad_inputs_raise_clear_errors(llama: Model, bad: Tensor, match: str) -> None:
    lm = EpisodicLM(llama, small_config())
    try:
        with pytest.raises(ValueError, match=match):
            lm.generate(bad, max_new_tokens=2)
        with pytest.raises(ValueError, match="max_new_tokens"):
            lm.generate(tokens(0, 4), max_new_tokens=-1)
    finally:
        lm.remove()


def test_bad_configs_raise_clear_errors(models: dict[str, Model], llama: Model) -> None:
    with pytest.raises(ValidationError, match="budget"):
        small_config(budget=8)
    with pytest.raises(ValueError, match="EpisodicConfig"):
        EpisodicLM(llama, {"n_local": 16})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="similarity_layers"):
        EpisodicLM(llama, small_config(), similarity_layers=[7])
    with pytest.raises(ValueError, match="retrieve_every"):
        EpisodicLM(llama, small_config(), retrieve_every=0)
    with pytest.raises(ValueError, match="store"):
        EpisodicLM(llama, small_config(), store=object())  # type: ignore[arg-type]
    encoder = tiny_random_model("gemma3", use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="causal decoder"):
        EpisodicLM(encoder, small_config())
    only_sliding = tiny_random_model("gemma3")  # every layer slides: nowhere to retrieve
    with pytest.raises(ValueError, match="full-attention layer"):
        EpisodicLM(only_sliding, small_config())
    assert instance_forwards(encoder) == instance_forwards(only_sliding) == 0


# ------------------------------------------------------------------------ SmolLM2 passkey


@pytest.mark.slow
def test_passkey_retrieved_beyond_the_window_on_smollm2() -> None:
    from policies import load_smollm2

    model, tokenizer = load_smollm2()
    config = EpisodicConfig(n_init=64, n_local=256, budget=256, chunk_size=128, max_event_size=64)
    input_ids = tokenizer(passkey_prompt(71432, 60, 0.3), return_tensors="pt").input_ids
    assert input_ids.shape[1] > 4 * (config.n_init + config.n_local + config.budget) / 2
    answers = {}
    for name, make in (("episodic", EpisodicLM), ("sliding window", sliding_window_baseline)):
        lm = make(model, config)  # one wrapper on the model at a time
        try:
            output = lm.generate(input_ids, max_new_tokens=6)
        finally:
            lm.remove()
        answers[name] = tokenizer.decode(output[0, input_ids.shape[1] :])
    print(f"passkey 71432 in {input_ids.shape[1]} tokens: {answers}")
    assert re.search(r"\b71432\b", answers["episodic"]), answers
    assert "71432" not in answers["sliding window"], answers
