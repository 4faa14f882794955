"""Object permanence with a VLA-shaped frozen policy: where memory helps, where it does not.

``permanence-vla`` (``envs.permanence_policy``: image patch tokens + instruction + an action
query through a 4-layer LLaMA, trained memoryless) on ``tempomem/ObjectPermanence-v0`` with 2
distractors (chance 1/3: the right cup of three). Seeded episodes (the same for every row of a
delay), success with 95 % Wilson intervals:

1. ceiling (the blocks stay visible) and floor (no memory once the cups are down);
2. ``calibrate_layers`` over layers 1-3 and TempoFit at each single layer and at [1, 2];
3. no memory / TempoFit / episodic / stacking at delays inside TempoFit's capacity of 8 frames
   and past it (JSON and plots to ``docs/eval/``, and success against delay);
4. a sweep of the FGTB strength ``beta`` and of the capacity at one delay.

``python -m benchmarks.bench_permanence [EPISODES]`` prints the markdown.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from benchmarks.bench_eval import PLOTS, STACK_K, evaluate_config
from envs.eval_plots import plot_success_by
from envs.evaluation import EvalReport, MemorySummary, evaluate
from envs.permanence_policy import calibration_frames
from envs.policy_zoo import POLICIES, load_policy, runner_options

POLICY = "permanence-vla"
ENV_ID = "tempomem/ObjectPermanence-v0"
SEED = 1000  # bench_eval's seed: the main table and these checks share episodes
CAPACITY = 8
DELAYS = (2, 6, 8, 12)  # the visible frames stay in an 8-frame FIFO up to delay 6
LAYER_CHECKS = ([0], [1], [2], [3], [1, 2])
SWEEP_DELAY = 4
BETAS = (0.0, 1 / 128, 1 / 32, 1 / 8)
CAPACITIES = (2, 4, 8, 16)


def _tempofit(layers: list[int], capacity: int = CAPACITY, beta: float | None = None) -> Any:
    return runner_options(POLICY, capacity=capacity, beta=beta, layers=layers)


def _one(policy: Any, memory: str, episodes: int, options: Any, **env: Any) -> MemorySummary:
    report = evaluate(
        ENV_ID, policy, [memory], episodes=episodes, seed=SEED, env_kwargs=env,
        runner_options=options,
    )  # fmt: skip
    return report.summaries[0]


def _cell(summary: MemorySummary) -> str:
    return (
        f"{summary.successes}/{summary.episodes} = **{summary.success_rate:.2f}** "
        f"[{summary.ci_low:.2f}, {summary.ci_high:.2f}]"
    )


def _calibration(policy: Any) -> str:
    from policies import calibrate_layers

    frames = calibration_frames(policy)
    calibration = calibrate_layers(
        policy.model, frames, candidates=[1, 2, 3], k=1, prefix_len=frames[0].shape[1] - 1
    )
    ranked = ", ".join(
        f"layer {s.layer}: score {s.score:.3f} (concentration {s.concentration:.2f}, "
        f"influence {s.influence:.3f} nats)"
        for s in calibration.ranking
    )
    return f"`calibrate_layers` (16 episodes at delay 2, candidates 1-3) ranks {ranked}."


def run(episodes: int = 120) -> str:
    """All parts as markdown, on one torch thread (a 64-wide model gains nothing from more,
    and a second thread only adds contention on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(episodes)
    finally:
        torch.set_num_threads(threads)


def _run(episodes: int) -> str:
    policy = load_policy(POLICY)
    ceiling = _one(policy, "none", episodes, None, delay=SWEEP_DELAY, occlude=False)
    floor = _one(policy, "none", episodes, None, delay=SWEEP_DELAY)

    table: list[str] = []
    images: list[str] = []
    reports: list[EvalReport] = []
    for delay in DELAYS:
        name = f"permanence-d{delay}"
        report, rows, links = evaluate_config(
            name, policy, POLICY, ENV_ID, {"delay": delay}, episodes
        )
        reports.append(report)
        table += rows
        images += links
    by_delay = plot_success_by(
        reports,
        "delay",
        PLOTS / "permanence_by_delay.png",
        title=f"{ENV_ID} (2 distractors), {POLICY}\nTempoFit capacity {CAPACITY}, "
        f"stacking {STACK_K}",
    )

    def tempofit_row(label: str, delay: int, layers: list[int], **config: Any) -> str:
        options = _tempofit(layers, **config)
        return f"| {label} | {_cell(_one(policy, 'tempofit', episodes, options, delay=delay))} |"

    layer_rows = [tempofit_row(str(layers), 2, layers) for layers in LAYER_CHECKS]
    layer_rows.append(tempofit_row("[1, 2], delay 12 (past capacity)", 12, [1, 2]))
    zoo_layers = list(POLICIES[POLICY].tempofit_layers or ())
    beta_rows = [
        tempofit_row(f"beta = {beta:g}", SWEEP_DELAY, zoo_layers, beta=beta) for beta in BETAS
    ]
    capacity_rows = [
        tempofit_row(f"capacity = {capacity}", SWEEP_DELAY, zoo_layers, capacity=capacity)
        for capacity in CAPACITIES
    ]
    default_beta = runner_options(POLICY)["tempofit"]["config"].beta
    return "\n".join(
        [
            f"`{POLICY}` on `{ENV_ID}`, 2 distractors (chance **0.33**: one of three identical "
            f"cups), reveal 2 steps, {episodes} seeded episodes per row from seed {SEED} (the "
            f"same episodes for every memory). TempoFit: {CAPACITY} frames at the zoo's layers "
            f"{zoo_layers}; episodic: `EpisodicRunner` defaults; stacking: the last {STACK_K} "
            f"frames. The target was last seen `delay + 1` steps before the graded decision, so "
            f"the visible frames are still in an {CAPACITY}-frame FIFO up to delay "
            f"{CAPACITY - 2}. One torch thread.",
            "",
            f"- **Ceiling** (the blocks never covered, no memory): {_cell(ceiling)}.",
            f"- **Floor** (covered for {SWEEP_DELAY} steps, no memory): {_cell(floor)}.",
            f"- {_calibration(policy)}",
            "",
            "| task | memory | success | 95 % CI | step ms | step / none |",
            "|---|---|---|---|---|---|",
            *table,
            "",
            f"![success by delay](docs/eval/{by_delay.name})",
            "",
            "TempoFit at other layers (delay 2, capacity 8; none at delay 2 is in the table):",
            "",
            "| layers | success [95 % CI] |",
            "|---|---|",
            *layer_rows,
            "",
            f"Sweep at delay {SWEEP_DELAY} (layers {zoo_layers}; capacity {CAPACITY} for the beta "
            f"rows, beta {default_beta:g} (the default) for the capacity rows; the floor above "
            f"is the no-memory row):",
            "",
            "| setting | success [95 % CI] |",
            "|---|---|",
            *beta_rows,
            *capacity_rows,
            "",
            "Per delay: success, step latency, and the memory timeline of episode 0.",
            "",
            *images,
        ]
    )


if __name__ == "__main__":  # pragma: no cover
    print(run(int(sys.argv[1]) if sys.argv[1:] else 120))
