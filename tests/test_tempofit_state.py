"""A TempoFit session survives a process restart through either store: the restored session's
next step gives logits identical to the uninterrupted one's."""

from __future__ import annotations

import pytest
import torch

from kv_store import load_state, save_state
from kv_store.base import BaseStore
from memory import TempoFitConfig
from policies import TempoFit, tiny_random_model

PREFIX, SUFFIX = 6, 3


def _frames(vocab: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, PREFIX + SUFFIX), generator=gen) for _ in range(n)]


def _run_then_restore(
    model_a, model_b, store: BaseStore, config: TempoFitConfig, frames, prefix_len: int = PREFIX
):
    """Run frames[:-1] on model_a, save, restore onto model_b; both run frames[-1]."""
    live = TempoFit(model_a, config)
    with torch.no_grad():
        for frame in frames[:-1]:
            with live.step(prefix_len=prefix_len):
                model_a(frame)
        save_state(store, "robot-1/tempofit", live.state_dict())
        with live.step(prefix_len=prefix_len):
            expected = model_a(frames[-1]).logits
    live.remove()

    restored = TempoFit(model_b, config)  # a fresh process: new model object, new wrapper
    state = load_state(store, "robot-1/tempofit")
    assert state is not None
    restored.load_state_dict(state)
    assert restored.steps_pushed == len(frames) - 1
    with torch.no_grad(), restored.step(prefix_len=prefix_len):
        got = model_b(frames[-1]).logits
    restored.remove()
    return expected, got


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_restored_session_gives_identical_next_step_logits(store: BaseStore, family: str) -> None:
    config = TempoFitConfig(layers=[1, 2], capacity=3)
    frames = _frames(128, 6)  # more frames than capacity: the FIFO has wrapped
    expected, got = _run_then_restore(
        tiny_random_model(family, seed=0), tiny_random_model(family, seed=0), store, config, frames
    )
    assert torch.equal(expected, got)


def test_restored_session_refuses_time_going_backwards(store: BaseStore) -> None:
    config = TempoFitConfig(layers=[1], capacity=2)
    model = tiny_random_model("llama", seed=0)
    live = TempoFit(model, config)
    with torch.no_grad(), live.step(prefix_len=PREFIX, t=10.0):
        model(_frames(128, 1)[0])
    save_state(store, "s", live.state_dict())
    live.remove()
    restored = TempoFit(model, config)
    state = load_state(store, "s")
    assert state is not None
    restored.load_state_dict(state)
    with pytest.raises(ValueError, match="backwards"), restored.step(prefix_len=PREFIX, t=5.0):
        model(_frames(128, 1)[0])
    restored.remove()


def test_state_of_another_layer_set_is_refused_and_changes_nothing(store: BaseStore) -> None:
    model = tiny_random_model("llama", seed=0)
    live = TempoFit(model, TempoFitConfig(layers=[1], capacity=2))
    with torch.no_grad(), live.step(prefix_len=PREFIX):
        model(_frames(128, 1)[0])
    save_state(store, "s", live.state_dict())
    live.remove()
    other = TempoFit(model, TempoFitConfig(layers=[2], capacity=2))
    state = load_state(store, "s")
    assert state is not None
    with pytest.raises(ValueError, match="layers"):
        other.load_state_dict(state)
    assert other.steps_pushed == 0 and other.memory.num_frames(2) == 0
    other.remove()


@pytest.mark.slow
def test_smollm2_session_round_trip_through_redis(redis_store: BaseStore) -> None:
    from policies import load_smollm2

    model, tokenizer = load_smollm2()
    config = TempoFitConfig(layers=[6, 9], capacity=4)
    text = ["The red cube is on the left.", "The robot moves right.", "Where is the cube?"]
    frames = [tokenizer(t, return_tensors="pt").input_ids[:, :6] for t in text]
    expected, got = _run_then_restore(model, model, redis_store, config, frames, prefix_len=4)
    assert torch.equal(expected, got)
