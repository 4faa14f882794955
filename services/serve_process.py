"""What `tempomem serve` runs once its options are checked: Ray, Serve, the store, a clean stop.

``run_server`` starts a local Ray (or, with ``address``, joins a running cluster), the
embedded redis-server when asked, Ray Serve with the app of ``services.deployment``, and on
SIGINT/SIGTERM stops them in order: Serve, serve's session hosts on a cluster (a local Ray
takes its actors along), Ray, the redis-server. ``check_cluster_options`` refuses the options
that make no sense with ``address``.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

console = Console()


def check_cluster_options(address: str | None, store: str, num_cpus: int | None) -> None:
    """With ``--address`` the session hosts run on the cluster's nodes: an embedded
    redis-server (loopback on this machine) or a CPU count of a local Ray make no sense."""
    if address is None:
        return
    if store == "embedded":
        raise ValueError(
            "--address: the embedded redis-server listens on this machine's loopback, out of "
            "reach of the other nodes' session hosts; give --store redis://HOST:PORT that "
            "every node reaches"
        )
    if num_cpus is not None:
        raise ValueError("--num-cpus sizes a local Ray; a cluster's nodes declare their own")


def run_server(
    settings: Any,
    *,
    host: str,
    port: int,
    embedded: bool,
    num_cpus: int | None,
    address: str | None = None,
) -> None:  # pragma: no cover - runs until interrupted
    import signal
    import time

    import ray
    from ray import serve as ray_serve

    from kv_store import redact_url
    from kv_store.redis_server import LocalRedisServer, find_redis_server
    from services.deployment import build_app
    from services.session import StoreSpec

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    redis_server = None
    if embedded:
        binary = find_redis_server()
        if binary is None:
            console.print("[yellow]redis-server not found: using the in-process 'local' store[/]")
        else:
            redis_server = LocalRedisServer(binary).start()
            settings = settings.model_copy(update={"store": StoreSpec(url=redis_server.url)})
    if host != "127.0.0.1" and not settings.http.tokens:
        console.print(f"[yellow]warning[/]: binding {host} without --token: anyone can connect")
    if address is not None:  # a running cluster: its nodes, its token auth
        ray.init(address=address, namespace=settings.ray_namespace, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            namespace=settings.ray_namespace,
            log_to_driver=False,
        )
    try:
        # After ray.init, which installs handlers of its own: SIGTERM (service managers) and
        # SIGINT (also when started in the background, where the shell ignores it) both shut
        # Serve, Ray and the embedded redis-server down cleanly.
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        ray_serve.start(http_options={"host": host, "port": port})
        ray_serve.run(build_app(settings), name=settings.app_name, route_prefix="/")
        auth = "on" if settings.http.tokens else "off"
        console.print(
            f"tempomem serving [bold]{settings.worker.model}[/] at http://{host}:{port} "
            f"(store {redact_url(settings.store.url)}, auth {auth}, Ray's ports: token auth); "
            "Ctrl-C stops"
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        ray_serve.shutdown()
        if address is not None:  # a local Ray takes its actors along; a cluster does not
            stop_session_hosts(settings.ray_namespace)
        ray.shutdown()
        if redis_server is not None:
            redis_server.stop()


def stop_session_hosts(ray_namespace: str) -> int:
    """Kill the (detached) session hosts of ``ray_namespace``; how many there were."""
    import contextlib

    import ray

    killed = 0
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == ray_namespace and actor["name"].startswith("tempomem/host/"):
            with contextlib.suppress(ValueError):  # already gone
                ray.kill(ray.get_actor(actor["name"], namespace=ray_namespace))
                killed += 1
    return killed
