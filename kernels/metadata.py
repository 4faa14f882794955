"""`FGTBMetadata`: everything an FGTB backend needs beside the query and the stored K/V.

As in vLLM's attention backends (backend / metadata / implementation), every backend has the
signature ``backend(query, k_hist, v_hist, metadata) -> (k_ctx, v_ctx)``; the metadata carries
the frame times, the validity mask, the per-head slopes and the two scales, and
`kernels.validation.validate_fgtb_inputs` checks it once, in `kernels.fgtb_forward`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from kernels.slopes import alibi_slopes


@dataclass(frozen=True)
class FGTBMetadata:
    """The bias and mask of one FGTB retrieval: query token s of head h in batch row b scores
    stored token l (over the tokens with ``hist_valid[b, l]`` only) as

        scale * <query[b, h, s], k_hist[b, h, l]> + bias[b, h, l]
        bias[b, h, l] = -bias_scale * slopes[h] * |t[b] - hist_time[b, l]|

    Attributes:
        hist_time: (B, L) floating, time tag tau of the frame each stored token belongs to.
        hist_valid: (B, L) bool, False for padding and empty slots.
        t: (B,) floating, current time.
        slopes: (H,) floating, per-head slopes m_h (see `alibi_slopes`).
        bias_scale: beta * alpha_S.
        scale: score scale; None means 1 / sqrt(D).
    """

    hist_time: Tensor
    hist_valid: Tensor
    t: Tensor
    slopes: Tensor
    bias_scale: float
    scale: float | None = None

    @classmethod
    def with_alibi_slopes(
        cls,
        hist_time: Tensor,
        hist_valid: Tensor,
        time: float | Tensor,
        bias_scale: float,
        num_heads: int,
    ) -> FGTBMetadata:
        """The metadata a `LayerwiseKVMemory` of ``num_heads`` KV heads uses: `alibi_slopes`,
        one current ``time`` (a float, or (B,)) for every batch row, the default scale.
        For tools that recompute the retrieval weights."""
        batch = hist_time.shape[0]
        now = torch.as_tensor(time, dtype=torch.float64).expand(batch).to(torch.float32)
        slopes = alibi_slopes(num_heads).to(hist_time.device)
        return cls(hist_time, hist_valid, now.to(hist_time.device), slopes, bias_scale)

    def score_scale(self, head_dim: int) -> float:
        """``scale``, or 1 / sqrt(head_dim) when it is None."""
        return 1.0 / math.sqrt(head_dim) if self.scale is None else self.scale

    def with_float32_times(self) -> FGTBMetadata:
        """A copy with float32 times (what the backends read) and a float ``bias_scale``.

        Float64 times are first made relative to t: absolute epoch seconds (~1.7e9) would keep
        only ~2 minutes of resolution in float32, and |t - tau| is unchanged by subtracting t.
        """
        if self.hist_time.dtype == torch.float64 or self.t.dtype == torch.float64:
            relative = self.hist_time.double() - self.t.double()[:, None]
            hist_time = relative.float()
            t = torch.zeros_like(self.t, dtype=torch.float32)
        else:
            hist_time, t = self.hist_time.float(), self.t.float()
        return dataclasses.replace(
            self, hist_time=hist_time, t=t, bias_scale=float(self.bias_scale)
        )


class FGTBBackend(Protocol):
    """One implementation of FGTB retrieval: query (B, H, S, D), k_hist and v_hist
    (B, H, L, D) -> (k_ctx, v_ctx), each (B, H, S, D) in query.dtype."""

    def __call__(
        self, query: Tensor, k_hist: Tensor, v_hist: Tensor, metadata: FGTBMetadata
    ) -> tuple[Tensor, Tensor]: ...
