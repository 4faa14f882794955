"""Pure tensor kernels for tempomem: Frame-Gap Temporal Bias (FGTB) retrieval.

`fgtb_retrieve` is the entry point (`fgtb_forward` takes the bias and mask as one
`FGTBMetadata`); `alibi_slopes` gives the per-head slopes. Triton is imported only when the
Triton backend runs, so this package imports without triton or a GPU.
"""

from kernels.blocked import fgtb_blocked
from kernels.dispatch import fgtb_forward, fgtb_retrieve, resolve_backend, triton_available
from kernels.metadata import FGTBBackend, FGTBMetadata
from kernels.reference import fgtb_reference, fgtb_scores
from kernels.slopes import alibi_slopes

__all__ = [
    "FGTBBackend",
    "FGTBMetadata",
    "alibi_slopes",
    "fgtb_blocked",
    "fgtb_forward",
    "fgtb_reference",
    "fgtb_retrieve",
    "fgtb_scores",
    "resolve_backend",
    "triton_available",
]
