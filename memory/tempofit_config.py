"""Configuration of TempoFit, the layer-wise temporal KV memory (mechanism 1 of DESIGN.md).

At a few chosen layers a frozen transformer keeps a FIFO of the last ``capacity`` frames' prefix
keys and values (stored before RoPE). The current frame retrieves from it with the Frame-Gap
Temporal Bias ``B(t, tau) = -beta * m_h * |t - tau| * alpha_S`` and adds the retrieved context to
its own keys and values (residual loading), rescaled to keep each token's norm.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

GapUnit = Literal["step", "chunk", "seconds"]
RetrievalMode = Literal["k2k", "q2k"]
LoadingMode = Literal["residual", "concat"]
KernelBackend = Literal["auto", "reference", "blocked", "triton"]

MAX_SELECTED_LAYERS = 64
MAX_CAPACITY = 1024
MAX_PREFIX_LEN_BOUND = 131_072

# One frame of gap costs exactly 1 nat for the steepest ALiBi head of an 8-KV-head model
# (m_1 = 2**-1) at a prefix of 256 tokens: beta * 0.5 * 256 * 1 = 1.
DEFAULT_BETA = 1.0 / 128.0


class TempoFitConfig(BaseModel):
    """Which layers keep a temporal KV memory, how much, and how recency is weighted.

    Frozen: a memory built from a config never sees it change under it. Unknown fields are
    rejected so that a typo (``capcity=4``) fails loudly instead of silently using a default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    layers: list[StrictInt] = Field(
        min_length=1,
        max_length=MAX_SELECTED_LAYERS,
        description=(
            "Indices (0-based) of the decoder layers that keep a memory; no default because the "
            "right layers are model-specific (the paper finds a few early-middle layers best: "
            "96.6 % vs 74 % with all layers). Non-empty, unique, >= 0, at most "
            f"{MAX_SELECTED_LAYERS} entries; strict ints, so True or '3' are rejected."
        ),
    )
    capacity: int = Field(
        default=8,
        ge=1,
        le=MAX_CAPACITY,
        description=(
            "Frames kept per layer (FIFO: the oldest is dropped first). Default 8, the best "
            "value in the paper's ablation; at most "
            f"{MAX_CAPACITY} so that memory stays bounded "
            "(capacity * max_prefix_len tokens per layer)."
        ),
    )
    beta: float = Field(
        default=DEFAULT_BETA,
        ge=0.0,
        allow_inf_nan=False,
        description=(
            "Strength of the Frame-Gap Temporal Bias, in nats per (slope * gap unit * alpha). "
            "With alpha = S and ALiBi slopes the bias per unit of gap is -beta * m_h * S, which "
            "grows with the prefix length, so beta must be small. Default 1/128: at S = 256 one "
            "frame of gap costs 1 nat for the steepest head of an 8-head model (m = 1/2), so "
            "that head weights the frame 8 steps back ~e^-8 lower and effectively looks at the "
            "last 1-3 frames, while the shallowest head (m = 1/256) pays 1/128 nat per frame and "
            "spreads over all 8 frames: a spectrum of horizons across heads. For 3 KV heads "
            "(slopes 1/4, 1/16, 1/256) the steepest head pays 0.5 nat per frame. These costs "
            "are of the order of the K-to-K content scores, so neither term drowns the other. "
            "0 disables the temporal bias (content-only retrieval). beta is per gap unit: with "
            "gap_unit='seconds' at 10 Hz, divide by 10 to keep the same per-frame cost."
        ),
    )
    alpha: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description=(
            "alpha_S, the bias scale tied to the prefix length. None (default, as in the paper) "
            "uses S, the current frame's prefix length, so the bias keeps pace with the sum of "
            "S content scores it competes with; a fixed positive value decouples the two."
        ),
    )
    gap_unit: GapUnit = Field(
        default="step",
        description=(
            "Unit of the times t given to push/retrieve: control steps (default; the unit the "
            "paper counts frame gaps in), action chunks, or seconds (for irregular control "
            "rates). The memory only takes differences of these times; beta is per unit."
        ),
    )
    retrieval: RetrievalMode = Field(
        default="k2k",
        description=(
            "'k2k' (default, the paper's choice): the current prefix keys query the stored keys, "
            "which needs nothing but K; 'q2k': the caller passes group-mean queries instead."
        ),
    )
    loading: LoadingMode = Field(
        default="residual",
        description=(
            "'residual' (default): K~ = K_t + K_ctx, V~ = V_t + V_ctx at the same token "
            "positions. 'concat' is the ablation that prepends the history to the attention "
            "instead (the caller uses history()); the paper reports it collapses the policy."
        ),
    )
    rescale: bool = Field(
        default=True,
        description=(
            "Rescale K~ and V~ per token and head to the norms of K_t and V_t (default True: the "
            "paper finds residual loading without rescaling worse than no memory at all)."
        ),
    )
    max_prefix_len: int = Field(
        default=4096,
        ge=1,
        le=MAX_PREFIX_LEN_BOUND,
        description=(
            "Longest prefix (tokens per frame) the memory accepts; bounds the per-layer storage "
            "to capacity * max_prefix_len tokens. Default 4096 covers a VLA prefix (a few "
            "hundred image tokens per camera plus the instruction) with room to spare."
        ),
    )
    eps: float = Field(
        default=1e-6,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Floor of ||K~|| in the rescale denominator (default 1e-6: far below real key/value "
            "norms, yet keeps a zero vector from dividing by zero)."
        ),
    )
    backend: KernelBackend = Field(
        default="auto",
        description=(
            "Retrieval kernel passed to kernels.fgtb_retrieve. 'auto' (default) picks Triton on "
            "CUDA tensors when it imports, else the blocked online-softmax torch kernel."
        ),
    )

    @field_validator("layers")
    @classmethod
    def _layers_are_unique_and_non_negative(cls, layers: list[int]) -> list[int]:
        negative = [layer for layer in layers if layer < 0]
        if negative:
            raise ValueError(f"layers must be >= 0; got negative indices {negative}")
        duplicates = sorted({layer for layer in layers if layers.count(layer) > 1})
        if duplicates:
            raise ValueError(f"layers must be unique; got duplicates {duplicates}")
        return layers

    def bias_scale(self, prefix_len: int) -> float:
        """``beta * alpha_S``: the factor of ``m_h * |t - tau|`` in the bias for a prefix of
        ``prefix_len`` tokens (alpha None -> alpha_S = prefix_len)."""
        alpha_s = float(prefix_len) if self.alpha is None else self.alpha
        return self.beta * alpha_s
