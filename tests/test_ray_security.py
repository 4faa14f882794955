"""`tempomem serve` refuses to start Ray with its token authentication off: Ray's ports listen on
every interface whatever ``--host`` says (the live check is in test_serve_secrets.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.ray_security import (
    AUTH_MODE_ENV,
    RayAuthDisabled,
    ray_supports_token_auth,
    require_token_auth,
)


def test_the_tested_ray_has_token_auth() -> None:
    assert ray_supports_token_auth()


def test_unset_mode_is_rays_default_token_auth() -> None:
    env: dict[str, str] = {}
    require_token_auth(env)
    assert env == {}


@pytest.mark.parametrize("mode", ["token", "TOKEN", " token "])
def test_token_mode_is_kept(mode: str) -> None:
    env = {AUTH_MODE_ENV: mode}
    require_token_auth(env)
    assert env == {AUTH_MODE_ENV: mode}


@pytest.mark.parametrize("mode", ["disabled", "", "k8s", "off"])
def test_any_other_mode_is_refused_with_the_fix(mode: str) -> None:
    env = {AUTH_MODE_ENV: mode}
    with pytest.raises(RayAuthDisabled, match=f"Unset {AUTH_MODE_ENV}"):
        require_token_auth(env)
    assert env == {AUTH_MODE_ENV: mode}  # nothing changed behind the caller's back


def test_serve_exits_before_starting_ray_when_auth_is_off() -> None:
    env = {**os.environ, AUTH_MODE_ENV: "disabled", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "serve", "--store", "local"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "token authentication off" in result.stdout + result.stderr
    assert "Started a local Ray" not in result.stdout + result.stderr
