"""Gemma 3 (one KV head, sliding-window layers around full-attention ones) under TempoFit and
EpisodicLM: a tiny random Gemma 3 shaped like the 270M model (fast), and Gemma 3 270M itself
(slow, loaded once per session by conftest's ``gemma3`` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from model_checks import (
    Model,
    hook_count,
    logits_of,
    robot_frames,
    text_recall_frames,
    two_steps_exact_when_empty_and_reversible,
)

from envs.memory_runners import make_runner
from envs.tasks.passkey import passkey_found, passkey_prompt
from envs.tasks.text_recall import TextRecallEnv
from envs.text_policy import GEMMA, TextChoicePolicy
from memory import EpisodicConfig, TempoFitConfig
from policies import EpisodicLM, TempoFit, default_layers
from policies.models import tiny_random_model

# The 270M model's pattern (five sliding-window layers, then one full-attention layer), cut short.
LAYER_TYPES = ["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2
LAYER_TYPES += ["full_attention"]
PREFIX = 10


@pytest.fixture(scope="module")
def tiny() -> Model:
    return tiny_random_model(
        "gemma3",
        num_hidden_layers=len(LAYER_TYPES),
        layer_types=LAYER_TYPES,
        num_key_value_heads=1,
        sliding_window=8,
        max_position_embeddings=1024,
    )


def test_tempofit_on_a_multi_query_gemma3_is_exact_when_empty_and_reversible(
    tiny: Model,
) -> None:
    generator = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 128, (1, 16), generator=generator) for _ in range(3)]
    reference = [logits_of(tiny, ids) for ids in frames]
    layers = [1, 2, 3]  # sliding and full-attention layers alike
    tempofit = TempoFit(tiny, TempoFitConfig(layers=layers, capacity=4))
    try:
        with tempofit.step(prefix_len=PREFIX):
            assert torch.equal(logits_of(tiny, frames[0]), reference[0]), "empty memory"
        for ids in frames[1:]:
            with tempofit.step(prefix_len=PREFIX):
                last = logits_of(tiny, ids)
        assert tempofit.memory.num_kv_heads == 1
        assert all(tempofit.memory.num_frames(layer) == 3 for layer in layers)
        assert (last - reference[2]).abs().max() > 1e-4, "memory changes the output"
    finally:
        tempofit.remove()
    assert hook_count(tiny) == 0
    assert torch.equal(logits_of(tiny, frames[2]), reference[2])


# ------------------------------------------------------------------------ Gemma 3 270M (slow)


@pytest.mark.slow
def test_gemma3_tempofit_is_exact_when_empty_changes_logits_and_is_reversible(
    gemma3: tuple[Model, Any],
) -> None:
    model, tokenizer = gemma3
    layers = default_layers(model.config.num_hidden_layers)
    tempofit, with_memory, reference = two_steps_exact_when_empty_and_reversible(
        model, TempoFitConfig(layers=layers), robot_frames(tokenizer)
    )
    assert tempofit.memory.num_frames(layers[0]) == 2
    assert tempofit.memory.num_kv_heads == 1 and tempofit.memory.head_dim == 256
    assert (with_memory - reference).abs().max() > 1e-3
    assert torch.isfinite(with_memory).all()


@pytest.mark.slow
def test_gemma3_episodic_lm_within_its_window_equals_the_plain_model(
    gemma3: tuple[Model, Any],
) -> None:
    model, tokenizer = gemma3
    input_ids = tokenizer(passkey_prompt(12345, 8, 0.5), return_tensors="pt").input_ids
    config = EpisodicConfig(n_init=16, n_local=256, budget=256, chunk_size=64)
    assert input_ids.shape[1] < config.n_init + config.n_local
    lm = EpisodicLM(model, config)
    try:
        logits = lm.feed(input_ids, return_logits=True)
    finally:
        lm.remove()
    assert lm.memory_layers == [5, 11, 17]
    torch.testing.assert_close(logits, logits_of(model, input_ids)[0], rtol=0, atol=2e-3)


@pytest.mark.slow
def test_gemma3_passkey_retrieved_beyond_four_local_windows(gemma3: tuple[Model, Any]) -> None:
    """The key sits ~1,700 tokens before the question in a ~2,460-token prompt (4.8 local
    windows): beyond the local window, the sliding-window layers' 512 tokens and EpisodicLM's
    whole span; only retrieval at the three full-attention layers can bring it back. (The plain
    model attending the whole prompt and the same-span sliding window both miss this key:
    measured, see BENCHMARKS.md; not rerun here to keep the test near a minute.)"""
    model, tokenizer = gemma3
    config = EpisodicConfig(n_init=64, n_local=512, budget=512, chunk_size=256, max_event_size=64)
    key = 71432
    input_ids = tokenizer(passkey_prompt(key, 100, 0.3), return_tensors="pt").input_ids
    assert input_ids.shape[1] > 4 * config.n_local
    lm = EpisodicLM(model, config)
    try:
        output = lm.generate(input_ids, max_new_tokens=6)
    finally:
        lm.remove()
    answer = tokenizer.decode(output[0, input_ids.shape[1] :])
    print(f"passkey {key} in {input_ids.shape[1]} tokens: {answer!r}, {len(lm.events())} events")
    assert passkey_found(key, answer), answer
    assert lm.memory_layers == [5, 11, 17]
    # Where the key's tokens sit in the stream, and the events the answer's steps attended.
    prompt = passkey_prompt(key, 100, 0.3)
    needle = len(tokenizer(prompt[: prompt.index(f"The pass key is {key}")]).input_ids)
    spans = {event_id: (start, end) for event_id, start, end in lm.events()}
    answering = [r for r in lm.retrievals if r.end >= input_ids.shape[1]]  # question + answer
    attended = {i for r in answering for layer in lm.memory_layers for i in r.events[layer]}
    assert needle < input_ids.shape[1] - config.n_local - 512
    assert any(spans[i][0] <= needle + 4 and needle < spans[i][1] for i in attended), (
        "the answer's steps attended the event holding the key"
    )


@pytest.mark.slow
def test_gemma3_text_policy_frames_and_a_cue_in_the_same_observation(
    gemma3: tuple[Model, Any],
) -> None:
    model, tokenizer = gemma3
    policy = TextChoicePolicy(model, tokenizer, turns=GEMMA, name="gemma3")
    frames, info = text_recall_frames(policy, delay=1)
    head = [
        tokenizer.bos_token_id,
        *tokenizer.encode("<start_of_turn>user\n", add_special_tokens=False),
    ]
    tail = tokenizer.encode("<end_of_turn>\n", add_special_tokens=False)
    suffix = tokenizer.encode("<start_of_turn>model\nAnswer:", add_special_tokens=False)
    for frame in frames:
        assert frame.prefix_ids[: len(head)] == head and frame.prefix_ids[-len(tail) :] == tail
        assert frame.suffix_ids == suffix
    assert [tokenizer.decode(c).strip() for c in frames[-1].choices or []] == info["choices"]
    # The cue in the query's own observation: Gemma 3 reads it (measured 29/30, 30/30, 30/30
    # for colour, object, number on seeds 0..29; SmolLM2 0.67-0.75 on colours).
    runner = make_runner("none", policy)
    correct = 0
    for seed in range(10):
        env = TextRecallEnv(delay=0, category="colour")
        cue, _ = env.reset(seed=seed)
        query, _, _, _, info = env.step(0)
        runner.reset()
        action, _ = runner.act(f"{cue} {query}", info)
        correct += env.step(action)[1] == 1.0
    assert correct >= 8
