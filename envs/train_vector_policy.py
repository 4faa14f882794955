"""Train the tiny T-maze policy memoryless and ship it: ``python -m envs.train_vector_policy``.

Data: every frame of seeded ``TMazeEnv(cue_visible="always")`` episodes (corridor lengths drawn
from 1..16), each its own sequence ``prefix + [<act>]`` (5 tokens, no history), twice:

- as seen (cue visible): target = the cued action token (LEFT/RIGHT);
- with the cue hidden (``<cue:none>``, as ``cue_visible="start"`` shows it after the first
  step): target = 1/2 LEFT + 1/2 RIGHT.

The loss is cross-entropy over the whole vocabulary for the token after ``<act>`` (soft targets
for the hidden-cue frames), on corridor and junction frames alike, although the env grades only
the junction: corridor frames teach "turn the way the cue says, wherever you see it", so the
cue's keys/values at every step of an episode carry the action, which is what a memory
(TempoFit) can bring to the junction; the hidden-cue frames leave the memoryless policy with no
preference without a cue (memoryless success on "start" is chance). Measured with the shipped
seed: trained on junction frames only, the policy plays the same memoryless (100 % / ~50 %) but
TempoFit cannot help it at any layer choice; trained as here, TempoFit at layers [1, 2] wins
every "start" episode at corridor lengths 4 and 8. Duplicate frames are merged into one row
weighted by its count (the same loss on 18 rows), so training takes about a second.

Full-batch AdamW (no dropout: the data and the initial weights are the only randomness, both
seeded; the global torch RNG is left alone), deterministic algorithms.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from envs.tasks.tmaze import TMazeEnv
from envs.training_cli import TrainingRun, run_training_cli, write_shipped_policy
from envs.vector_policy import (
    ACT,
    ACTION_TOKENS,
    META_FILE,
    MODEL_CONFIG,
    TOKENS,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    VectorTokenPolicy,
    build_model,
    encode_observation,
)

DEFAULT_SEED = 0
DEFAULT_STEPS = 300
DEFAULT_LR = 3e-3
EPISODES = 64
MAX_TRAIN_CORRIDOR = 16


@dataclass(frozen=True)
class TrainReport(TrainingRun):
    """What one training run did and how well the result plays (memoryless)."""

    distinct_frames: int
    accuracy_always: float
    accuracy_start: float

    def describe(self, out: Path) -> str:
        """One line for the console after training into ``out``."""
        return (
            f"trained in {self.train_seconds:.1f} s ({self.steps} steps, {self.frames} "
            f"frames, {self.distinct_frames} distinct, loss {self.final_loss:.4f}); "
            "memoryless success: "
            f"cue_visible='always' {self.accuracy_always:.3f}, "
            f"'start' {self.accuracy_start:.3f}; wrote {out / WEIGHTS_FILE}"
        )


def training_batch(seed: int = DEFAULT_SEED) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids (M, 5) long, targets (M, V) float, weights (M,) float)``: the distinct
    training frames (see the module docstring), the distribution of the token after ``<act>``
    and how often each frame occurs in the seeded episodes."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, MAX_TRAIN_CORRIDOR + 1, (EPISODES,), generator=generator)
    rows: dict[tuple[int, ...], tuple[torch.Tensor, int]] = {}

    def add(prefix: list[int], target: torch.Tensor) -> None:
        key = (*prefix, ACT)
        _, count = rows.get(key, (target, 0))
        rows[key] = (target, count + 1)

    uniform = torch.zeros(len(TOKENS))
    uniform[list(ACTION_TOKENS)] = 0.5
    for episode, length in enumerate(lengths.tolist()):
        env = TMazeEnv(corridor_length=int(length), cue_visible="always")
        obs, _ = env.reset(seed=seed * 100_003 + episode)
        one_hot = torch.zeros(len(TOKENS))
        one_hot[ACTION_TOKENS[env.cue]] = 1.0
        terminated = False
        while not terminated:
            add(encode_observation(obs), one_hot)
            add(encode_observation([0.0, 0.0, float(obs[2]), float(obs[3])]), uniform)
            obs, _, terminated, _, _ = env.step(0)
    keys = sorted(rows)
    ids = torch.tensor(keys, dtype=torch.long)
    targets = torch.stack([rows[key][0] for key in keys])
    weights = torch.tensor([float(rows[key][1]) for key in keys])
    return ids, targets, weights


def train(
    seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR
) -> tuple[VectorTokenPolicy, TrainReport]:
    """Train a fresh ``build_model(seed)`` memoryless; returns the frozen policy and a report
    (accuracies over 200 seeded episodes, corridor length 4)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        ids, targets, weights = training_batch(seed)
        model = build_model(seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        start = time.perf_counter()
        loss = torch.zeros(())
        for _ in range(steps):
            logits = model(ids).logits[:, -1]  # (M, V): the token after <act>
            per_frame = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            loss = (weights * per_frame).sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
    finally:
        torch.use_deterministic_algorithms(deterministic)
    policy = VectorTokenPolicy(model)
    report = TrainReport(
        seed=seed,
        steps=steps,
        lr=lr,
        frames=int(weights.sum()),
        distinct_frames=int(ids.shape[0]),
        final_loss=float(loss.detach()),
        train_seconds=seconds,
        accuracy_always=accuracy(policy, "always"),
        accuracy_start=accuracy(policy, "start"),
    )
    return policy, report


def accuracy(
    policy: Any,
    cue_visible: str,
    episodes: int = 200,
    seed: int = 0,
    corridor_length: int = 4,
    memory: str = "none",
    **runner_options: Any,
) -> float:
    """Success rate of ``policy`` over seeded ``TMazeEnv`` episodes (seeds seed..seed+n-1),
    driven by the ``envs.memory_runners`` runner ``memory`` (default: no memory)."""
    from envs.memory_runners import make_runner

    env = TMazeEnv(corridor_length=corridor_length, cue_visible=cue_visible)
    runner = make_runner(memory, policy, **runner_options)
    wins = 0
    try:
        for episode in range(episodes):
            runner.reset()
            obs, info = env.reset(seed=seed + episode)
            terminated = False
            while not terminated:
                action, _ = runner.act(obs, info)
                obs, reward, terminated, _, info = env.step(action)
            wins += reward == 1.0
    finally:
        runner.close()
    return wins / episodes


def save(policy: VectorTokenPolicy, report: TrainReport, directory: Path = WEIGHTS_DIR) -> None:
    """Write ``tmaze_policy.safetensors`` (tied head omitted) and ``tmaze_policy.json``."""
    from safetensors.torch import save as to_bytes

    state = {
        name: tensor.detach().contiguous()
        for name, tensor in policy.model.state_dict().items()
        if not (MODEL_CONFIG["tie_word_embeddings"] and name == "lm_head.weight")
    }
    meta = {"config": MODEL_CONFIG, "tokens": list(TOKENS), "training": asdict(report)}
    weights = to_bytes(state, metadata={"format": "pt"})
    write_shipped_policy(directory, (WEIGHTS_FILE, META_FILE), weights, meta)


def main(argv: list[str] | None = None) -> None:
    defaults = (DEFAULT_SEED, DEFAULT_STEPS, DEFAULT_LR, WEIGHTS_DIR)
    run_training_cli(__doc__.splitlines()[0], defaults, train, save, TrainReport.describe, argv)


if __name__ == "__main__":
    main()
