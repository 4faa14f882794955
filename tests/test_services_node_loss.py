"""Node loss on a real multi-node Ray cluster: sessions come back on a surviving node.

``ray.cluster_utils.Cluster`` starts a head and two worker nodes on this machine (one CPU
each, no dashboard), and the driver joins it. Three session hosts (``HostSpec(hosts=3)``,
``node_placement="spread"``) land on the three nodes; six robot sessions, two per host, step
through a real redis-server with write-through (``max_lag_steps=0``: every answered step is
committed). In the middle of the episode a worker node holding a host is removed
(``cluster.remove_node``) while every robot goes on stepping. The lost host restarts on a
surviving node and restores its sessions from Redis, and every session ends with every step,
each answer equal to a reference run of the same steps that lost no node; the sessions on the
other nodes see no error and are never restored. Then ``tempomem serve --address`` serves
from the same cluster.
"""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster

from kv_store.redis_server import LocalRedisServer
from memory import TempoFitConfig
from services.client import RayTransport, TempomemClient
from services.policy_worker import WorkerSpec
from services.schemas import SessionId, StepResponse
from services.session import SessionConfig
from services.session_host import HostSpec, host_index

pytestmark = pytest.mark.slow

RAY_NAMESPACE = f"tempomem-nodes-{uuid.uuid4().hex[:8]}"
# Placement "session": the model runs inside each host, so a lost node loses nothing else.
WORKER = WorkerSpec(
    model="tiny-llama",
    tempofit=TempoFitConfig(layers=[1, 2], capacity=4),
    placement="session",
)
HOSTS = HostSpec(hosts=3, node_placement="spread")
SESSIONS_PER_HOST = 2
STEPS = 10
LOSE_AFTER = 4  # steps every robot has answered when the node goes
PREFIX = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and two worker nodes, one CPU each; the driver is connected to the head."""
    nodes = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        for _ in range(2):
            nodes.add_node(num_cpus=1, include_dashboard=False)
        ray.init(address=nodes.address, namespace=RAY_NAMESPACE, log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


def _tokens(step: int, salt: int) -> list[int]:
    return [(7 * step + 3 * i + 11 * salt) % 120 + 1 for i in range(PREFIX + 4)]


def _client(tenant: str, redis: LocalRedisServer) -> TempomemClient:
    return TempomemClient(
        tenant,
        store=redis.url,
        worker=WORKER,
        config=SessionConfig(max_lag_steps=0),
        hosts=HOSTS,
        timeout_s=180,
    )


def _names_per_host(tenant: str) -> dict[int, list[str]]:
    """``SESSIONS_PER_HOST`` session ids of ``tenant`` for each host index."""
    found: dict[int, list[str]] = {i: [] for i in range(HOSTS.hosts)}
    k = 0
    while any(len(names) < SESSIONS_PER_HOST for names in found.values()):
        name = f"robot{k}"
        index = host_index(SessionId(kind="robot", namespace=tenant, id=name), HOSTS.hosts)
        if len(found[index]) < SESSIONS_PER_HOST:
            found[index].append(name)
        k += 1
    return found


def _node_of_host(client: TempomemClient, name: str) -> str:
    transport = client.transport
    assert isinstance(transport, RayTransport)
    stats = ray.get(transport.handle(client.session_id(name)).stats.remote(), timeout=180)
    return str(stats["node_id"])


def _same(a: StepResponse, b: StepResponse) -> bool:
    pairs = zip(a.top_k_logits, b.top_k_logits, strict=True)
    return (
        a.step_id == b.step_id
        and a.frames_in_memory == b.frames_in_memory
        and a.top_k_ids == b.top_k_ids
        and all(math.isclose(x, y, abs_tol=1e-5) for x, y in pairs)
    )


def test_sessions_of_a_lost_node_come_back_with_every_committed_step(
    cluster: Cluster, redis_server: LocalRedisServer
) -> None:
    run = uuid.uuid4().hex[:6]
    # The reference: the same robots and steps (another tenant), no node lost.
    reference = _client(f"ref-{run}", redis_server)
    live = _client(f"live-{run}", redis_server)
    ref_names = [n for names in _names_per_host(reference.namespace).values() for n in names]
    live_by_host = _names_per_host(live.namespace)
    live_names = [n for names in live_by_host.values() for n in names]
    expected = {
        salt: [reference.step(name, i, _tokens(i, salt), PREFIX) for i in range(STEPS)]
        for salt, name in enumerate(ref_names)
    }

    # The hosts spread over the three nodes; a worker node's host is the victim.
    host_nodes = {i: _node_of_host(live, names[0]) for i, names in live_by_host.items()}
    head = cluster.head_node.node_id
    assert len(set(host_nodes.values())) == 3, host_nodes
    victim = next(node for node in cluster.worker_nodes if node.node_id in host_nodes.values())
    lost_hosts = {i for i, node in host_nodes.items() if node == victim.node_id}
    lost = {n for i in lost_hosts for n in live_by_host[i]}

    answers: dict[str, list[StepResponse]] = {name: [] for name in live_names}
    errors: dict[str, BaseException] = {}
    slowest: dict[str, float] = {}
    halfway = threading.Barrier(len(live_names) + 1, timeout=180)

    def robot(salt: int, name: str) -> None:
        try:
            for i in range(STEPS):
                if i == LOSE_AFTER:
                    halfway.wait()
                began = time.monotonic()
                answers[name].append(live.step(name, i, _tokens(i, salt), PREFIX))
                slowest[name] = max(slowest.get(name, 0.0), time.monotonic() - began)
        except BaseException as err:  # reported below, with the session's name
            errors[name] = err
            halfway.abort()

    threads = [
        threading.Thread(target=robot, args=(salt, name), daemon=True)
        for salt, name in enumerate(live_names)
    ]
    for thread in threads:
        thread.start()
    halfway.wait()  # every robot has answered LOSE_AFTER steps and is about to send the next
    cluster.remove_node(victim)
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, {name: repr(err) for name, err in errors.items()}

    for salt, name in enumerate(live_names):
        got = answers[name]
        assert [a.step_id for a in got] == list(range(STEPS)), name
        assert all(_same(a, b) for a, b in zip(got, expected[salt], strict=True)), name
        summary = live.summary(name)
        assert summary.last_step_id == summary.committed_step_id == STEPS - 1, (name, summary)
        assert summary.frames_in_memory == reference.summary(ref_names[salt]).frames_in_memory
        # Only the lost node's sessions were restored (from Redis), the others never moved.
        assert summary.restored == (name in lost), (name, summary)

    survivors = {head, *(node.node_id for node in cluster.worker_nodes)}
    assert victim.node_id not in survivors
    for i in lost_hosts:
        moved_to = _node_of_host(live, live_by_host[i][0])
        assert moved_to in survivors, (i, moved_to)
    print(
        f"node lost after {LOSE_AFTER} steps; slowest step per session (s): "
        + ", ".join(f"{n}{'*' if n in lost else ''} {slowest[n]:.2f}" for n in live_names)
    )


def test_serve_with_address_serves_from_the_cluster(
    cluster: Cluster, redis_server: LocalRedisServer, tmp_path: Path
) -> None:
    """``tempomem serve --address`` joins the running cluster (no Ray of its own): a step over
    HTTP and one over the stream route get the same answer, its session hosts are the
    cluster's actors, and stopping serve (SIGTERM) removes them and leaves the cluster up."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    token = f"node-loss-{uuid.uuid4().hex}"
    log = (tmp_path / "serve.log").open("w")
    command = [
        *(sys.executable, "-m", "services.cli", "serve", "--address", cluster.address),
        *("--store", redis_server.url, "--port", str(port), "--placement", "session"),
        *("--token", f"tenant-a:{token}"),
    ]
    serve = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "serve did not come up"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        client = TempomemClient.connect(url, namespace="tenant-a", token=token)
        over_http = client.step("joined-http", 0, _tokens(0, 0), PREFIX)
        with client.stream("joined-stream") as stream:
            over_stream = stream.step(0, _tokens(0, 0), PREFIX)
        assert over_http.top_k_ids == over_stream.top_k_ids and not over_http.degraded
        assert client.flush("joined-http")  # written to the cluster-wide store
        assert _serve_hosts(), "serve's session hosts are not in the cluster"
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
        log.close()
    assert not _serve_hosts()
    assert any(node["Alive"] for node in ray.nodes())


def _serve_hosts() -> list[str]:
    """Session hosts of `tempomem serve` (its default Ray namespace) alive in the cluster."""
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "tempomem" and actor["name"].startswith("tempomem/host/")
    ]
