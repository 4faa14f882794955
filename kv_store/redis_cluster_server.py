"""A private, throw-away Redis Cluster on loopback ports (tests, benchmarks, demos).

`masters` redis-servers with `--cluster-enabled yes` (persistence off, each in its own temporary
directory, bus port chosen free), joined by `redis-cli --cluster create` with no replicas, so
the slots are split evenly and killing one master leaves its slots uncovered: the outage a
client must survive. `url` is a `redis+cluster://` URL naming the first node.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Self

import redis

from kv_store.redis_server import (
    INSTALL_HINT,
    LocalRedisServer,
    ThrowawayServer,
    find_redis_server,
    free_port,
)

#: How long a silent node takes to be declared failing (the cluster's `cluster-node-timeout`).
NODE_TIMEOUT_MS = 2000


def find_redis_cli() -> str | None:
    return shutil.which("redis-cli")


class LocalRedisCluster(ThrowawayServer):
    """`masters` private cluster nodes. `kill(i)` SIGKILLs node `i` (an abrupt outage)."""

    def __init__(self, masters: int = 3, binary: str | None = None) -> None:
        if masters < 3:
            raise ValueError(f"a Redis Cluster needs at least 3 masters, got {masters}")
        server, cli = binary or find_redis_server(), find_redis_cli()
        if server is None or cli is None:
            raise FileNotFoundError(f"redis-server and redis-cli are needed; {INSTALL_HINT}")
        self.cli = cli
        self.nodes = [
            LocalRedisServer(
                server,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    "--cluster-port",
                    str(free_port()),
                ],
            )
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout_s: float = 30.0) -> Self:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            self._wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ok(self, timeout_s: float) -> None:
        """Until every node says `cluster_state:ok` (all slots covered, config agreed)."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.nodes)
        while pending:
            node = pending[0]
            with redis.Redis(port=node.port, socket_timeout=1.0) as client:
                if client.cluster("INFO").get("cluster_state") == "ok":
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ok after {timeout_s} s (node :{node.port})")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
