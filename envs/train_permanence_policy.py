"""Train ``permanence-vla`` memoryless and ship it: ``python -m envs.train_permanence_policy``.

Behaviour cloning from the scripted expert (``envs.tasks.object_permanence.
expert_action_probs``), one frame at a time (no history), on frames of seeded
``ObjectPermanenceEnv`` scenes with 0-5 distractors:

- ``VISIBLE_FRAMES`` frames where the blocks are visible: target = the target's cell;
- ``COVERED_FRAMES`` frames where the cups are down: target = uniform over the cups (what the
  expert does without memory), so the frozen policy, not knowing, picks a cup, and memoryless
  success on occluded episodes is the task's chance level rather than an accident of whatever
  an untrained input does.

The loss is cross-entropy against these soft targets over the whole vocabulary at ``<act>``
and also at the instruction's colour word and the words after it (``READOUT``), all with the
same target. That is the T-maze policy's lesson (``envs.train_vector_policy``) carried over:
trained at ``<act>`` alone, the policy can look the target up from ``<act>`` (a suffix token,
never stored), and no prefix key/value carries the target's place; trained as here, the
colour word finds its block and holds the place in the prefix, which is what a prefix memory
(TempoFit) can bring forward. Measured with the shipped seed (200 episodes, 2 distractors,
delay 2): TempoFit at layer 1 lifts the occluded success from 0.39 to 0.72 with this loss,
from 0.39 to 0.44 (layers [1, 2]; an 80 %-ceiling run) with ``<act>`` alone. The patch
embedding is trained factorised, a code embedding plus a position embedding per patch token
(``PatchEmbedding``), then baked into the model's one embedding table, so the shipped model is
a plain ``LlamaForCausalLM``.

Minibatch AdamW (warm-up, cosine decay, no dropout); the data, the initial weights and the
batch order come from ``seed`` alone (the global torch RNG is left alone), deterministic
algorithms, one torch thread while training, so a retrain with the same seed on the same torch
build writes the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from envs.permanence_policy import (
    ACT,
    CELL_TOKENS,
    FIRST_PATCH,
    META_FILE,
    MODEL_CONFIG,
    TOKENS,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    PermanenceVLA,
    build_model,
    encode_observation,
)
from envs.tasks.object_permanence import (
    CELLS,
    CONTENTS,
    INSTRUCTION_TEMPLATE,
    MAX_DISTRACTORS,
    ObjectPermanenceEnv,
    expert_action_probs,
)
from envs.training_cli import TrainingRun, run_training_cli, write_shipped_policy
from memory.numbers import is_int

DEFAULT_SEED = 0
DEFAULT_STEPS = 800
DEFAULT_LR = 3e-3
BATCH = 128
WARMUP = 50
VISIBLE_FRAMES = 6144
COVERED_FRAMES = 2048
_WORDS = INSTRUCTION_TEMPLATE.split()
#: Sequence positions trained to name the action: the instruction's colour word, every token
#: after it, and <act> (the layout is [<bos>, 16 patches, 5 words, <act>]).
READOUT: list[int] = list(range(1 + CELLS + _WORDS.index("{colour}"), 1 + CELLS + len(_WORDS) + 1))


@dataclass(frozen=True)
class TrainReport(TrainingRun):
    """What one training run did, and the sha256 of the weights it produced."""

    train_cpu_seconds: float  # CPU time of this process while training
    weights_sha256: str

    def describe(self, out: Path) -> str:
        """One line for the console after training into ``out``."""
        return (
            f"trained in {self.train_seconds:.1f} s wall, {self.train_cpu_seconds:.1f} s CPU "
            f"({self.steps} steps of {BATCH}, "
            f"{self.frames} frames, loss {self.final_loss:.4f}); "
            f"sha256 {self.weights_sha256[:16]}...; wrote {out / WEIGHTS_FILE}"
        )


def training_batch(seed: int = DEFAULT_SEED) -> tuple[Tensor, Tensor]:
    """``(input_ids (M, 23) long, targets (M, V) float)``: the training frames (see the
    module docstring) and the expert's action distribution over the vocabulary."""
    rng = np.random.default_rng(seed)
    rows: list[list[int]] = []
    targets: list[np.ndarray] = []
    for index in range(VISIBLE_FRAMES + COVERED_FRAMES):
        covered = index >= VISIBLE_FRAMES
        env = ObjectPermanenceEnv(delay=0, distractors=int(rng.integers(MAX_DISTRACTORS + 1)))
        obs, _ = env.reset(seed=int(rng.integers(2**31)))
        if covered:
            for _ in range(env.reveal):
                obs, *_ = env.step(0)
        rows.append([*encode_observation(obs), ACT])
        target = np.zeros(len(TOKENS), dtype=np.float32)
        target[list(CELL_TOKENS)] = expert_action_probs(obs)
        targets.append(target)
    return torch.tensor(rows, dtype=torch.long), torch.from_numpy(np.stack(targets))


class PatchEmbedding(nn.Module):
    """The trainable input embedding: a free row per token, except that a patch token
    ``<p{cell}:{code}>`` is ``code_embedding[code] + position_embedding[cell]``.

    ``table()`` is the (V, hidden) table the shipped model's ``embed_tokens`` gets.
    """

    code_of: Tensor  # (V, codes) one-hot code of each patch token, 0 elsewhere
    cell_of: Tensor  # (V, CELLS) one-hot cell of each patch token, 0 elsewhere
    free: Tensor  # (V, 1) 1 for a token with its own free row

    def __init__(self, base: nn.Embedding, seed: int) -> None:
        super().__init__()
        vocab, hidden = base.weight.shape
        generator = torch.Generator().manual_seed(seed + 1)
        std = 0.02
        self.tokens = nn.Parameter(base.weight.detach().clone())
        self.codes = nn.Parameter(torch.randn(len(CONTENTS), hidden, generator=generator) * std)
        self.positions = nn.Parameter(torch.randn(CELLS, hidden, generator=generator) * std)
        patch_rows = torch.arange(FIRST_PATCH, FIRST_PATCH + CELLS * len(CONTENTS))
        code_of = torch.zeros(vocab, len(CONTENTS))
        cell_of = torch.zeros(vocab, CELLS)
        code_of[patch_rows, (patch_rows - FIRST_PATCH) % len(CONTENTS)] = 1.0
        cell_of[patch_rows, (patch_rows - FIRST_PATCH) // len(CONTENTS)] = 1.0
        free = torch.ones(vocab, 1)
        free[patch_rows] = 0.0
        self.register_buffer("code_of", code_of)
        self.register_buffer("cell_of", cell_of)
        self.register_buffer("free", free)

    def table(self) -> Tensor:
        return self.tokens * self.free + self.code_of @ self.codes + self.cell_of @ self.positions

    def forward(self, input_ids: Tensor) -> Tensor:
        return nn.functional.embedding(input_ids, self.table())


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over ``WARMUP`` steps, then cosine decay to 0 at ``steps``."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))


def weights_bytes(model: Any) -> bytes:
    """The safetensors bytes of ``model``'s state dict (what ``save`` writes)."""
    from safetensors.torch import save as to_bytes

    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    return to_bytes(state, metadata={"format": "pt"})


def train(
    seed: int = DEFAULT_SEED, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR
) -> tuple[PermanenceVLA, TrainReport]:
    """Train a fresh ``build_model(seed)`` memoryless (see the module); returns the frozen
    policy and a report."""
    if not is_int(steps) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        ids, targets = training_batch(seed)
        model = build_model(seed)
        embedding = PatchEmbedding(model.model.embed_tokens, seed)
        model.model.embed_tokens = embedding
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_lr_factor, steps=steps))
        order = torch.Generator().manual_seed(seed + 2)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = torch.zeros(())
        permutation, offset = torch.randperm(len(ids), generator=order), 0
        for _ in range(steps):
            if offset + BATCH > len(ids):
                permutation, offset = torch.randperm(len(ids), generator=order), 0
            batch = permutation[offset : offset + BATCH]
            offset += BATCH
            logits = model(ids[batch]).logits[:, READOUT]  # (B, R, V)
            expected = targets[batch, None].expand_as(logits)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), expected.flatten(0, 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        baked = nn.Embedding(*embedding.tokens.shape)
        baked.weight.data.copy_(embedding.table().detach())
        model.model.embed_tokens = baked
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    policy = PermanenceVLA(model)
    report = TrainReport(
        seed=seed,
        steps=steps,
        lr=lr,
        frames=len(ids),
        final_loss=float(loss.detach()),
        train_seconds=seconds,
        train_cpu_seconds=cpu_seconds,
        weights_sha256=hashlib.sha256(weights_bytes(model)).hexdigest(),
    )
    return policy, report


def save(policy: PermanenceVLA, report: TrainReport, directory: Path = WEIGHTS_DIR) -> None:
    """Write ``permanence_vla.safetensors`` and ``permanence_vla.json`` (config, tokens and
    the training report, whose ``weights_sha256`` is the hash of the weights file)."""
    meta = {"config": MODEL_CONFIG, "tokens": list(TOKENS), "training": asdict(report)}
    write_shipped_policy(directory, (WEIGHTS_FILE, META_FILE), weights_bytes(policy.model), meta)


def main(argv: list[str] | None = None) -> None:
    defaults = (DEFAULT_SEED, DEFAULT_STEPS, DEFAULT_LR, WEIGHTS_DIR)
    run_training_cli(__doc__.splitlines()[0], defaults, train, save, TrainReport.describe, argv)


if __name__ == "__main__":
    main()
