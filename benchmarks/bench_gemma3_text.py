"""Text recall with Gemma 3 270M as the frozen policy: is SmolLM2's text result a 135M artefact?

The same seeded episodes and memories as the SmolLM2 text rows of ``bench_eval`` (delay 2 and
8, 30 episodes from seed 1000; TempoFit 8 frames at ``policies.default_layers``, the episodic
runner's defaults, stacking of 4 frames), with ``envs.text_policy.load_gemma3_text_policy``
(Gemma turns, ``<bos>`` first, options scored as continuations). The ceiling row puts the cue
and the question in one observation (no memory needed). Plots go to ``docs/eval/``.
"""

from __future__ import annotations

from typing import Any

from benchmarks.bench_eval import evaluate_config
from envs.memory_runners import make_runner
from envs.policy_zoo import load_policy
from envs.tasks.text_recall import TextRecallEnv

CONFIGS = (("gemma3-text-d2", {"delay": 2}), ("gemma3-text-d8", {"delay": 8}))
CEILING_SEEDS = range(30)


def _ceiling(policy: Any) -> str:
    """Success with the cue in the query's own observation, per category."""
    runner = make_runner("none", policy)
    cells = []
    for category in ("colour", "object", "number"):
        env = TextRecallEnv(delay=0, category=category)
        correct = 0
        for seed in CEILING_SEEDS:
            cue, _ = env.reset(seed=seed)
            query, _, _, _, info = env.step(0)
            runner.reset()
            action, _ = runner.act(f"{cue} {query}", info)
            correct += env.step(action)[1] == 1.0
        cells.append(f"{category} {correct}/{len(CEILING_SEEDS)}")
    runner.close()
    return ", ".join(cells)


def run(episodes: int = 30) -> str:
    policy = load_policy("gemma3")
    ceiling = _ceiling(policy)
    table: list[str] = []
    images: list[str] = []
    for name, kwargs in CONFIGS:
        _, rows, links = evaluate_config(
            name, policy, "gemma3", "tempomem/TextRecall-v0", kwargs, episodes
        )
        table += rows
        images += links
    return "\n".join(
        [
            f"Gemma 3 270M (base) as the frozen text policy on the SmolLM2 rows' episodes "
            f"({episodes} per row, seed 1000; chance 0.25). Ceiling, cue and question in one "
            f"observation ({len(CEILING_SEEDS)} seeds each): {ceiling}.",
            "",
            "| task | memory | success | 95 % CI | step ms | step / none |",
            "|---|---|---|---|---|---|",
            *table,
            "",
            *images,
        ]
    )


if __name__ == "__main__":  # pragma: no cover
    print(run())
