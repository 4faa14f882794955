"""Pure tensor kernels for tempomem: Frame-Gap Temporal Bias (FGTB) retrieval.

`fgtb_retrieve` is the entry point; `alibi_slopes` gives the per-head slopes. Triton is
imported only when the Triton backend runs, so this package imports without triton or a GPU.
"""

from kernels.blocked import fgtb_blocked
from kernels.dispatch import fgtb_retrieve, resolve_backend, triton_available
from kernels.reference import fgtb_reference, fgtb_scores, fgtb_scores_at
from kernels.slopes import alibi_slopes

__all__ = [
    "alibi_slopes",
    "fgtb_blocked",
    "fgtb_reference",
    "fgtb_retrieve",
    "fgtb_scores",
    "fgtb_scores_at",
    "resolve_backend",
    "triton_available",
]
