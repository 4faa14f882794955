"""Packaging and architecture: the install works, imports point down the layer list, and our
top-level `kernels` package is never mistaken for Hugging Face's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["kernels", "memory", "kv_store", "policies", "envs", "services"]
# What each package may import of ours (DESIGN.md, "Layout and direction of imports").
ALLOWED = {
    "kernels": set(),
    "memory": {"kernels"},
    "kv_store": set(),
    "policies": {"memory", "kernels"},
    "envs": {"policies", "memory", "kernels"},
    "services": set(PACKAGES),
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_the_layers(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        ours = _imported_top_levels(path) & set(PACKAGES) - {package}
        bad = ours - ALLOWED[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "upward imports:\n" + "\n".join(offenders)


def test_transformers_does_not_take_our_kernels_for_theirs() -> None:
    pytest.importorskip("transformers")
    code = "import kernels, transformers.utils.import_utils as iu;print(iu.is_kernels_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_console_script_lists_its_commands() -> None:
    from typer.testing import CliRunner

    from services.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("version", "doctor", "store", "demo"):
        assert command in result.output


def test_every_package_imports() -> None:
    for package in PACKAGES:
        __import__(package)


def _lock() -> dict[str, str]:
    """``requirements.lock`` as canonical name -> exact version."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_satisfies_every_requirement_of_pyproject() -> None:
    """Every dependency and extra in pyproject is pinned in the lock at an allowed version,
    so `make setup` (which installs the lock with --no-deps) cannot miss or contradict one."""
    import tomllib

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = _lock()
    environment = {**default_environment(), "extra": ""}
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if name == "torch":  # installed first from constraints.txt, never from the lock
            assert "2.13.0" in requirement.specifier, text
            continue
        if name not in pins:
            problems.append(f"{text}: not in the lock")
        elif pins[name] not in requirement.specifier:
            problems.append(f"{text}: the lock has {pins[name]}")
    assert problems == [], "requirements.lock is stale, run `make lock`: " + "; ".join(problems)


def test_the_lock_never_carries_torch() -> None:
    assert "torch" not in _lock()  # a torch pin here could pull a CUDA build


def test_the_wheel_carries_the_data_files(tmp_path: Path) -> None:
    """The lexicons and the shipped policies' weights are package data: a wheel install (not
    only this editable checkout) must find them."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tempomem-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = {
        path.relative_to(ROOT).as_posix()
        for pattern in ("memory/temporal/lexicons/*.toml", "envs/weights/*")
        for path in ROOT.glob(pattern)
    }
    assert data and data <= names, sorted(data - names)
