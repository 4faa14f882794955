"""A ``tempomem serve`` application on a local Ray, for the tests that talk to it over HTTP."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import ray
from ray import serve

from services.deployment import ServeSettings, build_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_serve(settings: ServeSettings) -> Iterator[str]:
    """Ray (2 CPUs, ``settings.ray_namespace``) and Serve on a free loopback port running the
    app of ``settings``; yields its base URL and shuts both down after."""
    ray.init(
        num_cpus=2, include_dashboard=False, namespace=settings.ray_namespace, log_to_driver=False
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
