"""The command line both shipped-policy trainers share: ``--seed --steps --lr --out``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainingRun:
    """What every training run of a shipped policy reports; each trainer's ``TrainReport``
    adds its own measurements."""

    seed: int
    steps: int
    lr: float
    frames: int
    final_loss: float
    train_seconds: float  # wall clock (the machine may be shared)


def run_training_cli(
    description: str,
    defaults: tuple[int, int, float, Path],
    train: Callable[[int, int, float], tuple[Any, Any]],
    save: Callable[[Any, Any, Path], None],
    describe: Callable[[Any, Path], str],
    argv: list[str] | None = None,
) -> None:
    """``python -m envs.train_...``: parse ``--seed --steps --lr --out`` (``defaults`` in that
    order), ``train(seed, steps, lr)``, ``save(policy, report, out)``, print
    ``describe(report, out)``."""
    args = parse_training_args(description, *defaults, argv)
    policy, report = train(args.seed, args.steps, args.lr)
    save(policy, report, args.out)
    print(describe(report, args.out))


def parse_training_args(
    description: str, seed: int, steps: int, lr: float, out: Path, argv: list[str] | None
) -> argparse.Namespace:
    """``seed``, ``steps``, ``lr`` and ``out`` (the weights folder) from ``argv``; the other
    arguments are their defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--out", type=Path, default=out)
    return parser.parse_args(argv)


def write_shipped_policy(
    directory: Path, names: tuple[str, str], weights: bytes, meta: dict[str, Any]
) -> None:
    """Write a shipped policy: ``names`` = (weights file, metadata file); ``weights`` are
    safetensors bytes, ``meta`` goes out as indented JSON."""
    weights_file, meta_file = names
    directory.mkdir(parents=True, exist_ok=True)
    (directory / weights_file).write_bytes(weights)
    (directory / meta_file).write_text(json.dumps(meta, indent=2) + "\n")
