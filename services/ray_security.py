"""Ray's own ports, and why `tempomem serve` insists on Ray's token authentication.

Ray's GCS, raylet and worker gRPC servers listen on every interface, whatever interface the
HTTP API binds: ``ray.init(_node_ip_address="127.0.0.1")`` turns the loopback address into the
routable one (``ray._private.services.resolve_ip_for_localhost``), and Ray 2.60 has no bind-address
option. Anyone who reaches those ports without authentication can run code in the cluster. What
closes them is Ray's token authentication (``RAY_AUTH_MODE=token``; the token lives in
``~/.ray/auth_token`` and is never printed by tempomem): every call without the token is refused
with ``UNAUTHENTICATED``. A new local cluster turns it on by default; `serve` refuses to start one
with it switched off.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_MODE = "token"


class RayAuthDisabled(RuntimeError):
    """Ray's token authentication is off (or this Ray cannot do it), so its ports are open."""


def ray_supports_token_auth() -> bool:
    """Whether the installed Ray has token authentication (Ray ≥ 2.52)."""
    try:
        return importlib.util.find_spec("ray._private.authentication") is not None
    except ModuleNotFoundError:  # pragma: no cover - ray not installed
        return False


def require_token_auth(environ: Mapping[str, str] | None = None) -> None:
    """Check that a local Ray cluster started from this process will use token authentication.

    Unset ``RAY_AUTH_MODE`` is fine: a new local cluster then turns token authentication on
    (Ray's default, which ``ray.init`` applies to this process and its children together;
    setting the variable here instead would leave this process's already-loaded Ray config
    behind). Raises :class:`RayAuthDisabled`, saying how to fix it, when the variable is set to
    anything but ``token`` or the installed Ray has no token authentication. Changes nothing.
    """
    env = os.environ if environ is None else environ
    if not ray_supports_token_auth():
        raise RayAuthDisabled(
            "this Ray has no token authentication, and Ray's ports listen on every interface: "
            "install ray>=2.52 (`make setup` installs the tested version)"
        )
    mode = env.get(AUTH_MODE_ENV)
    if mode is not None and mode.strip().lower() != TOKEN_MODE:
        raise RayAuthDisabled(
            f"{AUTH_MODE_ENV}={mode!r} switches Ray's token authentication off, and Ray's ports "
            "listen on every interface (Ray has no option to bind them to one): anyone who "
            f"reaches this machine could run code in the cluster. Unset {AUTH_MODE_ENV} or set "
            f"it to {TOKEN_MODE!r}."
        )
