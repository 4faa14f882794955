"""Does memory help a frozen policy? The evaluation harness on the shipped tasks.

1. Text recall (``tempomem/TextRecall-v0``) with SmolLM2-135M-Instruct as the frozen text
   policy, at a short and a longer delay between cue and question.
2. The vector T-maze (``tempomem/TMaze-v0``) with the tiny policy trained memoryless.

Each configuration runs the same seeded episodes with no memory, TempoFit (default layers,
8 frames), EM-LLM episodic memory and frame stacking (k frames). Success with 95 % Wilson
intervals and the median step time relative to no memory (measured in the same run) go into
the table; the plots go to ``docs/eval/``.

``python -m benchmarks.bench_eval [--episodes 30]`` prints the markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from envs.eval_plots import plot_all
from envs.evaluation import EvalReport, evaluate
from envs.policy_zoo import load_policy, runner_options

PLOTS = Path(__file__).resolve().parents[1] / "docs" / "eval"
STACK_K = 4
CONFIGS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("text-d2", "smollm2", "tempomem/TextRecall-v0", {"delay": 2}),
    ("text-d8", "smollm2", "tempomem/TextRecall-v0", {"delay": 8}),
    ("tmaze-c4", "tmaze-tiny", "tempomem/TMaze-v0", {"corridor_length": 4}),
    ("tmaze-c12", "tmaze-tiny", "tempomem/TMaze-v0", {"corridor_length": 12}),
)


def _rows(name: str, report: EvalReport) -> list[str]:
    base = report.summary("none").latency_p50_ms
    kwargs = ", ".join(f"{k}={v}" for k, v in report.env_kwargs.items())
    rows = []
    for s in report.summaries:
        rows.append(
            f"| {name} ({kwargs}) | {s.memory} | {s.successes}/{s.episodes} = "
            f"**{s.success_rate:.2f}** | [{s.ci_low:.2f}, {s.ci_high:.2f}] | "
            f"{s.latency_p50_ms:.1f} | {s.latency_p50_ms / base:.2f} |"
        )
    return rows


def evaluate_config(
    name: str, policy: Any, policy_name: str, env_id: str, kwargs: dict[str, Any], episodes: int
) -> tuple[EvalReport, list[str], list[str]]:
    """The report, table rows and plot links of one configuration (seed 1000; JSON and plots
    written to docs/eval/ under ``name``)."""
    report = evaluate(
        env_id,
        policy,
        episodes=episodes,
        seed=1000,
        env_kwargs=kwargs,
        runner_options=runner_options(policy_name, stack=STACK_K),
    )
    PLOTS.mkdir(parents=True, exist_ok=True)
    (PLOTS / f"{name}.json").write_text(report.to_json())
    images = [
        f"![{path.stem}](docs/eval/{path.name})"
        for path in plot_all(report, PLOTS, prefix=f"{name}_")
    ]
    return report, _rows(name, report), images


def run(episodes: int = 30) -> str:
    """All configurations as markdown (plots written to docs/eval/)."""
    policies: dict[str, Any] = {}
    table: list[str] = []
    images: list[str] = []
    for name, policy_name, env_id, kwargs in CONFIGS:
        policy = policies.get(policy_name) or policies.setdefault(
            policy_name, load_policy(policy_name)
        )
        _, rows, links = evaluate_config(name, policy, policy_name, env_id, kwargs, episodes)
        table += rows
        images += links
    return "\n".join(
        [
            f"{episodes} seeded episodes per row (the same episodes for every memory); success "
            f"with its 95 % Wilson interval; step time = median model time per step, and its "
            f"ratio to no memory in the same run. TempoFit: 8 frames at "
            f"`policies.default_layers` (SmolLM2) or layers [1, 2] (the 4-layer T-maze "
            f"policy); "
            f"episodic: `envs.memory_runners.EpisodicRunner` defaults (32-token local window, "
            f"64 retrieved tokens); stacking: the last {STACK_K} frames. Chance: 0.25 for text "
            f"recall (4 options), 0.5 for the T-maze.",
            "",
            "| task | memory | success | 95 % CI | step ms | step / none |",
            "|---|---|---|---|---|---|",
            *table,
            "",
            "Per task: success, step latency, and the memory timeline of episode 0 (what each "
            "step's memory offered from each past step).",
            "",
            *images,
        ]
    )


def main() -> None:  # pragma: no cover
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--episodes", type=int, default=30)
    print(run(parser.parse_args().episodes))


if __name__ == "__main__":  # pragma: no cover
    main()
