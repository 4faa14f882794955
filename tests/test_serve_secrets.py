"""`tempomem serve` as a process, probed as an attacker would: a password-protected Redis, two
tenants. No response, error, CLI output, banner or Ray log line may carry the Redis password;
a tenant cannot create or read what it should not; and nothing `serve` starts outlives it.

Slow (a real Ray + Serve start, ~30-60 s each); they run in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kv_store.redis_server import LocalRedisServer, find_redis_server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.redis]

PASSWORD = "pw-Zq8xK3vT1mN6bR4s"
TOKEN_A = "tenant-a-token-0123456789"
TOKEN_B = "tenant-b-token-0123456789"
CLI = [sys.executable, "-m", "services.cli"]


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ray_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_healthy(served: Served, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(f"serve exited early:\n{served.output()[-4000:]}")
        try:
            if httpx.get(served.url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"serve did not answer /healthz in {timeout_s} s:\n{served.output()[-4000:]}")


def _serve(tmp: Path, *args: str) -> Served:
    port = free_port()
    # A short RAY_TMPDIR of this test's own: Ray's unix sockets need short paths, and its logs
    # are read afterwards.
    ray_dir = Path(tempfile.mkdtemp(prefix="tmr", dir="/tmp"))
    log = tmp / "serve.log"
    env = {**os.environ, "RAY_TMPDIR": str(ray_dir), "COLUMNS": "200"}
    command = [*CLI, "serve", "--model", "tiny-llama", "--port", str(port), "--num-cpus", "2"]
    process = subprocess.Popen(
        [*command, "--token", f"tenant-a:{TOKEN_A}", "--token", f"tenant-b:{TOKEN_B}", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    served = Served(f"http://127.0.0.1:{port}", process, log, ray_dir)
    _wait_healthy(served)
    return served


def _stop(served: Served, sig: int = signal.SIGTERM) -> None:
    if served.process.poll() is None:
        os.kill(served.process.pid, sig)
        try:
            served.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(served.process.pid, signal.SIGKILL)
            served.process.wait(timeout=30)


def _processes_under(path: Path) -> list[str]:
    """Command lines of running processes that mention ``path`` (Ray's, for this serve)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.fixture
def protected_redis() -> Iterator[LocalRedisServer]:
    if find_redis_server() is None:
        pytest.skip("redis-server not installed")
    server = LocalRedisServer(password=PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_output_of_a_run_carries_the_store_password(
    protected_redis: LocalRedisServer, tmp_path: Path
) -> None:
    served = _serve(tmp_path, "--store", protected_redis.url, "--placement", "session")
    seen: list[str] = []
    try:
        a, b = _auth(TOKEN_A), _auth(TOKEN_B)
        step = {"step_id": 0, "input_ids": list(range(1, 13)), "prefix_len": 8}
        with httpx.Client(base_url=served.url, timeout=120) as http:
            responses = [
                http.post("/v1/sessions/arm/step", json=step, headers=a),
                http.get("/v1/sessions/arm/summary", headers=a),
                http.get("/v1/sessions/arm/summary", headers=b),  # B's "arm" does not exist
                http.get("/v1/sessions/nobody/summary", headers=a),
                http.get("/v1/info", headers=a),
                http.get("/healthz"),
                http.get("/metrics", headers=a),
                http.get("/openapi.json"),
                http.post(
                    "/v1/agents/chat/events",
                    json={"kind": "message", "message": {"role": "user", "content": "hi"}},
                    headers=a,
                ),
            ]
            assert [r.status_code for r in responses[:4]] == [200, 200, 404, 404]
            assert responses[1].json()["store"] == "redis"
            assert responses[5].json() == {"status": "ok"}
            protected_redis.kill()  # the store goes away: errors must not name its password
            responses.append(
                http.post(
                    "/v1/agents/chat/events",
                    json={"kind": "message", "message": {"role": "user", "content": "again"}},
                    headers=a,
                )
            )
            assert responses[-1].status_code == 503
            for step_id in range(1, 5):  # no error reaches the robot: steps go on degraded
                responses.append(
                    http.post("/v1/sessions/arm/step", json={**step, "step_id": step_id}, headers=a)
                )
                assert responses[-1].status_code == 200
                time.sleep(0.2)
            assert responses[-1].json()["degraded"]
            seen += [f"{r.status_code} {r.headers} {r.text}" for r in responses]
        cli = [
            [*CLI, "status", "--url", served.url, "--token", TOKEN_A],
            [*CLI, "store", "ping", "--url", protected_redis.url],
        ]
        for command in cli:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            seen.append(result.stdout + result.stderr)
        assert "redis" in seen[-2]  # status printed its table
    finally:
        _stop(served)
    seen.append(served.output())
    ray_logs = [p for p in served.ray_dir.rglob("*") if p.is_file() and p.stat().st_size < 50e6]
    assert ray_logs, "no Ray logs found to check"
    seen += [
        p.read_text(errors="replace") for p in ray_logs if p.suffix in (".log", ".out", ".err")
    ]
    secrets = [PASSWORD]
    ray_token = Path.home() / ".ray" / "auth_token"  # Ray's own token: as secret as the password
    if ray_token.is_file() and len(ray_token.read_text().strip()) >= 16:
        secrets.append(ray_token.read_text().strip())
    leaks = [
        text[max(0, text.find(secret) - 200) :][:400]
        for text in seen
        for secret in secrets
        if secret in text
    ]
    assert leaks == [], leaks


def test_nothing_serve_starts_outlives_it_when_it_is_killed(tmp_path: Path) -> None:
    if find_redis_server() is None:
        pytest.skip("redis-server not installed")
    served = _serve(tmp_path)  # --store embedded: serve starts its own redis-server
    children = _processes_under(served.ray_dir)
    embedded = [
        line
        for line in Path("/proc").glob("[0-9]*/cmdline")
        if b"redis-server" in _read(line) and _parent(line.parent) == served.process.pid
    ]
    assert children, "expected Ray processes of this serve"
    assert embedded, "expected the embedded redis-server as a child of serve"
    _assert_rays_ports_refuse_calls_without_its_token(served)
    os.kill(served.process.pid, signal.SIGKILL)  # no chance to clean up
    served.process.wait(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = _processes_under(served.ray_dir) + [
            str(p) for p in embedded if p.exists() and b"redis-server" in _read(p)
        ]
        if not left:
            return
        time.sleep(1)
    pytest.fail(f"still running 60 s after serve was killed: {left}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _parent(proc: Path) -> int:
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[1])


def _assert_rays_ports_refuse_calls_without_its_token(served: Served) -> None:
    """Ray's gRPC servers listen on every interface (Ray has no bind option), so they must refuse
    a caller without Ray's token: a GCS, raylet or worker call from outside gets no answer."""
    import grpc
    import psutil
    from ray.core.generated import (
        core_worker_pb2,
        core_worker_pb2_grpc,
        gcs_service_pb2,
        gcs_service_pb2_grpc,
        node_manager_pb2,
        node_manager_pb2_grpc,
    )

    pids = {int(line.split(":", 1)[0]) for line in _processes_under(served.ray_dir)}
    listeners = [
        (conn.pid, conn.laddr.port)
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
        and conn.pid in pids
        and conn.laddr.ip in ("0.0.0.0", "::")
    ]
    assert listeners, "expected Ray's listeners on every interface (the reason for this check)"
    routable = next(
        addr.address
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family.name == "AF_INET" and not addr.address.startswith("127.")
    )
    probes = [
        (
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub,
            "GetAllNodeInfo",
            gcs_service_pb2.GetAllNodeInfoRequest(),
        ),
        (
            node_manager_pb2_grpc.NodeManagerServiceStub,
            "GetNodeStats",
            node_manager_pb2.GetNodeStatsRequest(),
        ),
        (
            core_worker_pb2_grpc.CoreWorkerServiceStub,
            "GetCoreWorkerStats",
            core_worker_pb2.GetCoreWorkerStatsRequest(),
        ),
    ]
    codes: dict[int, set[str]] = {}
    for _pid, port in listeners:
        with grpc.insecure_channel(f"{routable}:{port}") as channel:
            for stub, method, request in probes:
                try:
                    getattr(stub(channel), method)(request, timeout=5)
                    codes.setdefault(port, set()).add("OK")
                except grpc.RpcError as err:
                    codes.setdefault(port, set()).add(err.code().name)
    answered = {port: c for port, c in codes.items() if "OK" in c}
    assert answered == {}, f"Ray ports that answered a call without the token: {answered}"
    refused = [port for port, c in codes.items() if "UNAUTHENTICATED" in c]
    assert len(refused) >= 2, f"expected GCS and raylet to refuse as UNAUTHENTICATED: {codes}"
