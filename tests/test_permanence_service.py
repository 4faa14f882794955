"""permanence-vla through the service (session placement, real Ray): a session steps the
occlusion task exactly as the in-process runners do, with TempoFit and without memory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import gymnasium as gym
import pytest
import ray

import envs  # noqa: F401  (registers the tempomem/ ids)
from envs.evaluation import run_episode
from envs.memory_runners import make_runner
from envs.permanence_policy import load_permanence_model, load_permanence_policy
from envs.policy_zoo import runner_options
from services.client import TempomemClient
from services.policy_worker import WorkerSpec
from services.service_runner import ServiceRunner


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    namespace = f"tempomem-test-{uuid.uuid4().hex[:8]}"
    ray.init(num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        yield namespace
    finally:
        ray.shutdown()


def test_a_session_steps_permanence_vla_like_the_in_process_runner(ray_cluster: str) -> None:
    policy = load_permanence_policy()
    config = runner_options("permanence-vla")["tempofit"]["config"]
    worker = WorkerSpec(label="permanence-vla", tempofit=config, placement="session")
    client = TempomemClient(
        f"tenant-{uuid.uuid4().hex[:6]}", worker=worker, worker_factory=load_permanence_model
    )
    env = gym.make("tempomem/ObjectPermanence-v0", delay=3)
    runners = {
        True: make_runner("tempofit", policy, config=config),
        False: make_runner("none", policy),
    }
    for memory, local in runners.items():
        try:
            for seed in (1, 2):
                service = ServiceRunner(policy, client, f"s-{memory}-{seed}", memory)
                remote = run_episode(service, env, seed, 0)
                reference = run_episode(local, env, seed, 0)
                assert remote.success == reference.success
                for a, b in zip(remote.steps, reference.steps, strict=True):
                    assert a.action == b.action and a.frames_in_memory == b.frames_in_memory
                    assert a.scores == pytest.approx(b.scores, abs=1e-5)
        finally:
            local.close()
    env.close()
