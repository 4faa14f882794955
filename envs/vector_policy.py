"""A tiny frozen LLaMA that plays the T-maze from one observation at a time.

``TMazeEnv`` observations ``[cue_left, cue_right, at_junction, progress]`` become 4 prefix
tokens from a fixed 16-token vocabulary (``TOKENS``)::

    <bos> <cue:none|cue:left|cue:right> <corridor|junction> <progress:0..4>

the suffix is ``<act>``, and at the junction the choices are ``[[LEFT], [RIGHT]]`` (actions 0
and 1). Because the policy is a transformers ``LlamaForCausalLM``, the same memory machinery
(TempoFit, frame stacking, EpisodicLM) applies to it as to SmolLM2. The shipped weights
(``envs/weights/tmaze_policy.safetensors`` + ``tmaze_policy.json``) were trained memoryless by
``python -m envs.train_vector_policy``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.frozen_policy import Frame, frozen_model

TOKENS: tuple[str, ...] = (
    "<bos>",
    "<cue:none>",
    "<cue:left>",
    "<cue:right>",
    "<corridor>",
    "<junction>",
    "<progress:0>",
    "<progress:1>",
    "<progress:2>",
    "<progress:3>",
    "<progress:4>",
    "<act>",
    "LEFT",
    "RIGHT",
    "<pad>",
    "<unused>",
)
TOKEN_IDS: dict[str, int] = {token: index for index, token in enumerate(TOKENS)}
PROGRESS_BUCKETS = 5
PREFIX_LEN = 4
ACT = TOKEN_IDS["<act>"]
ACTION_TOKENS: tuple[int, int] = (TOKEN_IDS["LEFT"], TOKEN_IDS["RIGHT"])

#: The architecture of the shipped model (a ``transformers.LlamaConfig``'s arguments).
MODEL_CONFIG: dict[str, Any] = {
    "vocab_size": len(TOKENS),
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "bos_token_id": TOKEN_IDS["<bos>"],
    "pad_token_id": TOKEN_IDS["<pad>"],
    "eos_token_id": None,
}

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = "tmaze_policy.safetensors"
META_FILE = "tmaze_policy.json"


def encode_observation(obs: Any) -> list[int]:
    """The 4 prefix tokens of one T-maze observation (array-like of shape (4,))."""
    values = np.asarray(obs, dtype=np.float32)
    if values.shape != (4,) or not np.all(np.isfinite(values)):
        raise ValueError(
            "obs must be a finite T-maze observation of shape (4,) "
            f"[cue_left, cue_right, at_junction, progress], got {obs!r}"
        )
    cue_left, cue_right, at_junction, progress = (float(v) for v in values)
    if cue_left > 0.5 and cue_right > 0.5:
        raise ValueError(f"obs shows both cues (left and right), got {obs!r}")
    cue = "<cue:left>" if cue_left > 0.5 else "<cue:right>" if cue_right > 0.5 else "<cue:none>"
    place = "<junction>" if at_junction > 0.5 else "<corridor>"
    bucket = min(PROGRESS_BUCKETS - 1, max(0, round(progress * (PROGRESS_BUCKETS - 1))))
    return [TOKEN_IDS["<bos>"], TOKEN_IDS[cue], TOKEN_IDS[place], TOKEN_IDS[f"<progress:{bucket}>"]]


def build_model(seed: int = 0) -> Any:
    """A randomly initialised (trainable) ``LlamaForCausalLM`` of ``MODEL_CONFIG``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG))
    finally:
        torch.random.set_rng_state(state)


class VectorTokenPolicy:
    """``envs.frozen_policy.FrozenPolicy`` for ``TMazeEnv`` on a tiny token LM.

    ``frame(obs, info)``: prefix = ``encode_observation(obs)`` (always 4 tokens), suffix =
    ``[<act>]``, choices = ``[[LEFT], [RIGHT]]`` when ``obs`` shows the junction, else None
    (the corridor; default action 0). ``info`` is not read. The model is put in eval mode with
    gradients off.
    """

    name = "tmaze-tiny"

    def __init__(self, model: Any) -> None:
        self.model = frozen_model(model, len(TOKENS))

    def frame(self, obs: Any, info: Mapping[str, Any] | None = None) -> Frame:
        prefix = encode_observation(obs)
        at_junction = prefix[2] == TOKEN_IDS["<junction>"]
        return Frame(
            prefix_ids=prefix,
            suffix_ids=[ACT],
            choices=[[ACTION_TOKENS[0]], [ACTION_TOKENS[1]]] if at_junction else None,
            default_action=0,
            labels=["left", "right"] if at_junction else [],
        )

    def __repr__(self) -> str:
        return f"VectorTokenPolicy(layers={self.model.config.num_hidden_layers})"


def load_vector_policy(directory: str | Path | None = None) -> VectorTokenPolicy:
    """The shipped T-maze policy (no network): weights and config from ``directory``
    (default ``envs/weights``), frozen, eval mode, CPU."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(directory) if directory is not None else WEIGHTS_DIR
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no {META_FILE} + {WEIGHTS_FILE} in {folder}; run python -m envs.train_vector_policy"
        )
    meta = json.loads(meta_path.read_text())
    if list(meta.get("tokens", [])) != list(TOKENS):
        raise ValueError(f"{meta_path}: its token map differs from envs.vector_policy.TOKENS")
    model = LlamaForCausalLM(LlamaConfig(**meta["config"]))
    state = load_file(str(weights_path))
    if model.config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return VectorTokenPolicy(model)  # built on the CPU
