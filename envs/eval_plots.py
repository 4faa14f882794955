"""Plots of an ``EvalReport``: success with confidence intervals, step latency, memory timeline.

Each function writes one PNG (matplotlib, Agg backend) and returns its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from envs.evaluation import EvalReport

_COLOURS = {"none": "#8c8c8c", "tempofit": "#1f77b4", "episodic": "#2ca02c", "stacking": "#ff7f0e"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_success(report: EvalReport, path: str | Path) -> Path:
    """Success rate per memory kind with its 95 % Wilson interval and the chance level."""
    plt = _pyplot()
    names = [s.memory for s in report.summaries]
    rates = [s.success_rate for s in report.summaries]
    errors = [
        [s.success_rate - s.ci_low for s in report.summaries],
        [s.ci_high - s.success_rate for s in report.summaries],
    ]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
    ax.bar(names, rates, yerr=errors, capsize=6, color=[_COLOURS.get(n, "#555") for n in names])
    chance = _chance(report)
    if chance is not None:
        ax.axhline(chance, color="k", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")
        ax.legend(loc="upper left", fontsize=8)
    for x, s in enumerate(report.summaries):
        ax.text(x, s.ci_high + 0.02, f"{s.successes}/{s.episodes}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success rate (95 % Wilson CI)")
    ax.set_title(f"{report.env_id} {_kwargs(report)}\npolicy {report.policy}", fontsize=9)
    return _save(fig, path)


def plot_latency(report: EvalReport, path: str | Path) -> Path:
    """Histogram of per-step model latency (ms) per memory kind, log-spaced bins."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    all_ms = [s.latency_ms for e in report.episodes for s in e.steps if s.latency_ms > 0]
    if all_ms:
        bins = np.geomspace(min(all_ms), max(all_ms) * 1.01, 40)
        for summary in report.summaries:
            ms = [
                s.latency_ms for e in report.episodes if e.memory == summary.memory for s in e.steps
            ]
            ax.hist(
                ms,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                color=_COLOURS.get(summary.memory, "#555"),
                label=f"{summary.memory} (p50 {summary.latency_p50_ms:.1f} ms)",
            )
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("model time per step (ms)")
    ax.set_ylabel("steps")
    ax.set_title(f"Step latency, {report.policy} on {report.env_id}", fontsize=9)
    return _save(fig, path)


def plot_timeline(report: EvalReport, path: str | Path, episode: int = 0) -> Path:
    """For one episode, per memory kind: what each step's memory offered from each past step
    (TempoFit: retrieval mass per stored frame; episodic: share of retrieved event tokens;
    stacking: the frames in context), as a step x past-step heat map."""
    import numpy as np

    plt = _pyplot()
    shown = [e for e in report.episodes if e.episode == episode and e.memory != "none"] or [
        e for e in report.episodes if e.episode == episode
    ]
    if not shown:
        raise ValueError(f"episode {episode} is not in the report")
    fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.4), squeeze=False)
    for ax, result in zip(axes[0], shown, strict=True):
        n = len(result.steps)
        grid = np.zeros((n, n))
        for step in result.steps:
            for past, weight in step.retrieved.items():
                if 0 <= past < n:
                    grid[step.step, past] = weight
        image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=max(1e-9, grid.max()))
        decided = [s.step for s in result.steps if s.decided]
        ax.scatter([0] * len(decided), decided, marker=">", color="red", s=18, label="decision")
        ax.set_xlabel("past step (memory)")
        ax.set_ylabel("current step")
        verdict = "success" if result.success else "fail"
        ax.set_title(f"{result.memory}: {verdict}", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"What memory offered, episode {episode} (seed {shown[0].seed})", fontsize=9)
    return _save(fig, path)


def plot_success_by(
    reports: Sequence[EvalReport], key: str, path: str | Path, title: str = ""
) -> Path:
    """Success (95 % Wilson interval as error bars) against env kwarg ``key`` across
    ``reports`` of one task and policy: one line per memory kind, and the chance level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ordered = sorted(reports, key=lambda r: r.env_kwargs[key])
    xs = [r.env_kwargs[key] for r in ordered]
    for memory in dict.fromkeys(s.memory for r in ordered for s in r.summaries):
        points = [(x, r.summary(memory)) for x, r in zip(xs, ordered, strict=True)]
        ax.errorbar(
            [x for x, _ in points],
            [s.success_rate for _, s in points],
            yerr=[
                [s.success_rate - s.ci_low for _, s in points],
                [s.ci_high - s.success_rate for _, s in points],
            ],
            marker="o",
            capsize=4,
            label=memory,
            color=_COLOURS.get(memory, "#555"),
        )
    chance = _chance(ordered[0]) if ordered else None
    if chance is not None:
        ax.axhline(chance, color="k", linestyle=":", linewidth=1, label=f"chance {chance:.2f}")
    ax.set_xticks(xs)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(key)
    ax.set_ylabel("success rate (95 % Wilson CI)")
    ax.legend(fontsize=8, loc="best")
    if ordered:
        ax.set_title(title or f"{ordered[0].env_id}, policy {ordered[0].policy}", fontsize=9)
    return _save(fig, path)


def plot_all(report: EvalReport, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """The three plots into ``out_dir``."""
    out = Path(out_dir)
    return [
        plot_success(report, out / f"{prefix}success.png"),
        plot_latency(report, out / f"{prefix}latency.png"),
        plot_timeline(report, out / f"{prefix}timeline.png"),
    ]


def _chance(report: EvalReport) -> float | None:
    choices = report.env_kwargs.get("n_choices")
    if "TextRecall" in report.env_id:
        return 1.0 / float(choices or 4)
    if "TMaze" in report.env_id:
        return 0.5
    if "ObjectPermanence" in report.env_id:  # a cup picked at random
        return 1.0 / (1 + int(report.env_kwargs.get("distractors", 2)))
    return None


def _kwargs(report: EvalReport) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(report.env_kwargs.items()))


def _save(fig: Any, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return target
