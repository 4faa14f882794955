"""Our model-facing code paths use only current transformers APIs.

transformers announces removals in two ways: Python warnings (``FutureWarning`` /
``DeprecationWarning``, e.g. ``past_key_values`` -> ``cache``) and ``logger.warning_once`` lines
(e.g. ``torch_dtype`` -> ``dtype``). Both are caught here while TempoFit (every loading and
retrieval mode), choice scoring with a multi-token choice, layer calibration, EpisodicLM and the
loaders run (tiny LLaMA, Qwen3, Gemma 2 and Gemma 3 models; SmolLM2 and Gemma 3 270M when
slow), so a path that would break at the announced removal fails now, under the locked and
under the newest allowed transformers (``make test-latest``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from memory import EpisodicConfig, TempoFitConfig
from policies import EpisodicLM, TempoFit
from policies.choice_scoring import score_choices
from policies.layer_selection import calibrate_layers
from policies.models import tiny_random_model

PREFIX, SUFFIX = 10, 6


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def deprecations() -> Iterator[list[str]]:
    """Collects deprecation warnings and transformers' deprecation log lines raised inside."""
    found: list[str] = []
    handler = _Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    # warning_once remembers what it said in this process: forget, so each test sees its own.
    from transformers.utils import logging as hf_logging

    cache_clear = getattr(getattr(hf_logging, "warning_once", None), "cache_clear", None)
    if cache_clear is not None:
        cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        logger.removeHandler(handler)
    found += [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if issubclass(w.category, DeprecationWarning | FutureWarning)
    ]
    found += [m for m in handler.messages if "deprecat" in m.lower()]


def frames(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (1, PREFIX + SUFFIX), generator=generator) for _ in range(count)]


def run_tempofit_steps(model: Any, config: TempoFitConfig) -> None:
    tempofit = TempoFit(model, config)
    try:
        for ids in frames(3):
            with torch.inference_mode(), tempofit.step(prefix_len=PREFIX):
                out = model(input_ids=ids, use_cache=True)
            score_choices(model, out.logits[0, -1], out.cache, [[1], [2, 3, 4]])
    finally:
        tempofit.remove()


CASES: dict[str, Callable[[Any], None]] = {
    "residual": lambda m: run_tempofit_steps(m, TempoFitConfig(layers=[1, 2], capacity=2)),
    "concat": lambda m: run_tempofit_steps(
        m, TempoFitConfig(layers=[1, 2], capacity=2, loading="concat")
    ),
    "q2k": lambda m: run_tempofit_steps(
        m, TempoFitConfig(layers=[1], capacity=2, retrieval="q2k")
    ),
    "calibrate": lambda m: calibrate_layers(m, frames(3), candidates=[0, 1, 2], k=2,
                                            prefix_len=PREFIX),
}  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tempofit_paths_emit_no_deprecations(family: str, case: str) -> None:
    model = tiny_random_model(family, attn_implementation="eager")
    with deprecations() as found:
        CASES[case](model)
    assert found == []


# Gemma 3 as the 270M model has it: one KV head, sliding-window layers around full ones. The
# concat ablation does not support Gemma 3 (one rotary table per layer type).
def tiny_gemma3() -> Any:
    return tiny_random_model(
        "gemma3",
        attn_implementation="eager",
        num_key_value_heads=1,
        layer_types=["sliding_attention", "full_attention"] * 2,
    )


@pytest.mark.parametrize("case", sorted(set(CASES) - {"concat"}))
def test_tempofit_paths_on_gemma3_emit_no_deprecations(case: str) -> None:
    model = tiny_gemma3()
    with deprecations() as found:
        CASES[case](model)
    assert found == []


EPISODIC = EpisodicConfig(
    n_init=4, n_local=16, budget=16, chunk_size=8, min_event_size=2, max_event_size=8,
    surprise_window=8, n_repr=2, k_similar=2, k_contiguous=1,
)  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_episodic_lm_emits_no_deprecations(family: str) -> None:
    model = tiny_random_model("llama") if family == "llama" else tiny_gemma3()
    with deprecations() as found:
        lm = EpisodicLM(model, EPISODIC)
        try:
            lm.generate(frames(1)[0].repeat(1, 6), max_new_tokens=4)
        finally:
            lm.remove()
    assert found == []


def test_the_probe_sees_a_deprecated_call() -> None:
    """The collector itself works: the deprecated keyword is caught."""
    model = tiny_random_model("llama")
    ids = frames(1)[0]
    cache = model(input_ids=ids, use_cache=True).cache
    with deprecations() as found:
        model(input_ids=ids[:, :1], past_key_values=cache)
    assert any("past_key_values" in line for line in found)


@pytest.mark.slow
@pytest.mark.parametrize(("loader", "layers"), [("load_smollm2", [6, 9]), ("load_gemma3", [4, 5])])
def test_real_model_load_tempofit_and_episodic_emit_no_deprecations(
    loader: str, layers: list[int]
) -> None:
    import policies

    with deprecations() as found:
        model, _ = getattr(policies, loader)()
        run_tempofit_steps(model, TempoFitConfig(layers=layers, capacity=2))
        lm = EpisodicLM(
            model, EpisodicConfig(n_init=8, n_local=32, budget=32, chunk_size=16, max_event_size=16)
        )
        try:
            lm.generate(frames(1)[0].repeat(1, 8), max_new_tokens=2)
        finally:
            lm.remove()
    assert found == []
