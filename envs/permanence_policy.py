"""``permanence-vla``: a tiny VLA-shaped frozen policy for ``tempomem/ObjectPermanence-v0``.

One control step reads one observation (a 16 x 16 RGB image and an instruction) as::

    [<bos> | 16 patch tokens | instruction tokens | <act>]  ->  one of 16 cell tokens

- **Patch tokens.** The image is cut into its 4 x 4 grid of 4 x 4-pixel patches (row-major);
  each patch is matched to the nearest template of a fixed codebook (8 codes: table, cup and
  six block colours; ``envs.tasks.object_permanence.decode_cells``) and becomes the token
  ``<p{cell}:{code}>``. The embedding row of that token is a learned code embedding plus a
  learned position embedding (ViT's patch + position embedding over VQ patch codes; trained
  factorised, shipped as one table, see ``envs.train_permanence_policy``), so a token
  position keeps meaning the same place of the table from frame to frame.
- **Instruction tokens**: its words ("pick up the red block"), one token each.
- **Action query**: ``<act>``; the action is the cell token scored highest after it
  (``Frame.choices`` = the 16 cell tokens at every step; the env grades only the last).

The prefix (what TempoFit remembers, frame stacking concatenates and episodic memory streams)
is everything before ``<act>``: 22 tokens. The decoder is a transformers ``LlamaForCausalLM``
(``MODEL_CONFIG``: 4 layers, hidden 64), trained memoryless by behaviour cloning and frozen;
the shipped weights are ``envs/weights/permanence_vla.safetensors`` + ``permanence_vla.json``
(``python -m envs.train_permanence_policy`` writes them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from envs.frozen_policy import Frame, frozen_model
from envs.tasks.object_permanence import CELLS, COLOURS, CONTENTS, decode_cells
from policies.models import TINY_ARCHITECTURE

INSTRUCTION_WORDS: tuple[str, ...] = ("pick", "up", "the", "block", *COLOURS)
MAX_INSTRUCTION_WORDS = 16
TOKENS: tuple[str, ...] = (
    "<bos>",
    *(f"<p{cell}:{content}>" for cell in range(CELLS) for content in CONTENTS),
    *INSTRUCTION_WORDS,
    "<act>",
    *(f"<cell:{cell}>" for cell in range(CELLS)),
    "<pad>",
)
TOKEN_IDS: dict[str, int] = {token: index for index, token in enumerate(TOKENS)}
BOS = TOKEN_IDS["<bos>"]
ACT = TOKEN_IDS["<act>"]
FIRST_PATCH = TOKEN_IDS[f"<p0:{CONTENTS[0]}>"]
CELL_TOKENS: tuple[int, ...] = tuple(TOKEN_IDS[f"<cell:{cell}>"] for cell in range(CELLS))

#: The architecture of the shipped model (a ``transformers.LlamaConfig``'s arguments): the
#: tiny test models' shape with this vocabulary.
MODEL_CONFIG: dict[str, Any] = {
    **TINY_ARCHITECTURE,
    "vocab_size": len(TOKENS),
    "bos_token_id": BOS,
    "pad_token_id": TOKEN_IDS["<pad>"],
    "eos_token_id": None,
}

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "permanence_vla.safetensors"
META_FILE = "permanence_vla.json"


def patch_token(cell: int, code: int) -> int:
    """The token id of ``cell`` showing content ``code`` (``CONTENTS`` index)."""
    return FIRST_PATCH + cell * len(CONTENTS) + code


def encode_instruction(instruction: str) -> list[int]:
    """One token per word; every word must be in ``INSTRUCTION_WORDS``."""
    words = str(instruction).split()
    unknown = [word for word in words if word not in INSTRUCTION_WORDS]
    if not words or unknown or len(words) > MAX_INSTRUCTION_WORDS:
        raise ValueError(
            f"instruction must be 1-{MAX_INSTRUCTION_WORDS} words of {INSTRUCTION_WORDS}, "
            f"got {instruction!r}"
        )
    return [TOKEN_IDS[word] for word in words]


def encode_observation(obs: Mapping[str, Any]) -> list[int]:
    """The prefix tokens of one observation: ``[<bos>, 16 patch tokens, instruction words]``."""
    if not isinstance(obs, Mapping) or not {"image", "instruction"} <= set(obs):
        raise ValueError(
            f"obs must be a mapping with 'image' and 'instruction', got {type(obs).__name__}"
        )
    codes = decode_cells(obs["image"]).tolist()
    patches = [patch_token(cell, code) for cell, code in enumerate(codes)]
    return [BOS, *patches, *encode_instruction(obs["instruction"])]


def build_model(seed: int = 0) -> Any:
    """A randomly initialised (trainable) ``LlamaForCausalLM`` of ``MODEL_CONFIG``; the
    global torch RNG is left as it was."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG))


class PermanenceVLA:
    """``envs.frozen_policy.FrozenPolicy`` for ``ObjectPermanenceEnv`` (see the module).

    ``frame(obs, info)``: prefix = ``encode_observation(obs)``, suffix = ``[<act>]``, choices
    = the 16 cell tokens (action i = cell i) at every step. ``info`` is not read. The model
    is put in eval mode with gradients off.
    """

    name = "permanence-vla"

    def __init__(self, model: Any) -> None:
        self.model = frozen_model(model, len(TOKENS))

    def frame(self, obs: Any, info: Mapping[str, Any] | None = None) -> Frame:
        return Frame(
            prefix_ids=encode_observation(obs),
            suffix_ids=[ACT],
            choices=[[token] for token in CELL_TOKENS],
            labels=[f"cell {cell}" for cell in range(CELLS)],
        )

    def __repr__(self) -> str:
        return f"PermanenceVLA(layers={self.model.config.num_hidden_layers})"


def load_permanence_model(directory: str | Path | None = None) -> Any:
    """The shipped frozen ``LlamaForCausalLM`` (CPU, eval mode, no grads; no network), from
    ``directory`` (default ``envs/weights``). A module-level function, so it can be a
    ``services`` worker factory (``TempomemClient(worker_factory=load_permanence_model)``)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(directory) if directory is not None else WEIGHTS_DIR
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no {META_FILE} + {WEIGHTS_FILE} in {folder}; "
            "run python -m envs.train_permanence_policy"
        )
    meta = json.loads(meta_path.read_text())
    if list(meta.get("tokens", [])) != list(TOKENS):
        raise ValueError(f"{meta_path}: its token map differs from envs.permanence_policy.TOKENS")
    model = LlamaForCausalLM(LlamaConfig(**meta["config"]))
    model.load_state_dict(load_file(str(weights_path)), strict=True)
    return PermanenceVLA(model).model


def load_permanence_policy(directory: str | Path | None = None) -> PermanenceVLA:
    """The shipped ``permanence-vla`` policy (see ``load_permanence_model``)."""
    return PermanenceVLA(load_permanence_model(directory))


def calibration_frames(
    policy: PermanenceVLA, delay: int = 2, episodes: int = 16, distractors: int = 2
) -> list[torch.Tensor]:
    """Input ids of seeded occluded episodes (seeds ``0 .. episodes - 1``, action 0 at every
    step) for ``policies.calibrate_layers``: one ``(episodes, 23)`` tensor per step (prefix +
    ``<act>``; batch row = episode)."""
    from envs.tasks.object_permanence import ObjectPermanenceEnv

    env = ObjectPermanenceEnv(delay=delay, distractors=distractors)
    rows = []
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        frames = [policy.frame(obs, info)]
        for _ in range(env.episode_steps - 1):
            obs, _, _, _, info = env.step(0)
            frames.append(policy.frame(obs, info))
        rows.append([frame.prefix_ids + frame.suffix_ids for frame in frames])
    return list(torch.tensor(rows).unbind(1))
