"""One layer's FIFO of frames for `LayerwiseKVMemory`: a ring buffer that allocates itself.

Shapes: B = batch (sessions), H = KV heads, C = capacity (frames kept), N = frames stored
(<= C), S_slot = slot length of one stored frame, D = head dim, L = N * S_slot.

`LayerRing` owns its buffers (keys/values (B, H, C, S_slot, D) in the model's dtype, a token
mask (B, C, S_slot) and frame times (B, C) float64 on the CPU): they are allocated by the first
`write` (like the per-layer caches of transformers' ``cache_utils``), grown when a longer frame
arrives, written one slot per frame in place, and read back either in slot order (views, for
retrieval, where order does not matter) or oldest first (copies, for history and state).
Inputs are trusted here; `LayerwiseKVMemory` checks them first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_SLOT_GROWTH_FACTOR = 1.25
_SLOT_GRANULARITY = 16


@dataclass(frozen=True)
class RingSpec:
    """What every layer's ring of one memory shares: sizes, storage dtype and device."""

    batch_size: int
    num_kv_heads: int
    head_dim: int
    capacity: int
    max_prefix_len: int
    dtype: torch.dtype
    device: torch.device

    def zeros(self, num_frames: int, slot_len: int) -> RingFrames:
        """Zero K/V, an all-False mask and zero times for ``num_frames`` slots of ``slot_len``."""
        batch = self.batch_size
        kv_shape = (batch, self.num_kv_heads, num_frames, slot_len, self.head_dim)
        return RingFrames(
            keys=torch.zeros(kv_shape, dtype=self.dtype, device=self.device),
            values=torch.zeros(kv_shape, dtype=self.dtype, device=self.device),
            token_valid=torch.zeros(
                batch, num_frames, slot_len, dtype=torch.bool, device=self.device
            ),
            frame_time=torch.zeros(batch, num_frames, dtype=torch.float64),
        )


@dataclass
class RingFrames:
    """Frames of one layer: keys, values (B, H, N, S_slot, D) with zeros at padding,
    token_valid (B, N, S_slot) bool, frame_time (B, N) float64 on the CPU."""

    keys: Tensor
    values: Tensor
    token_valid: Tensor
    frame_time: Tensor

    def flattened(self, frame_time: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The frames as one history of L = N * S_slot tokens, frame j at tokens
        [j * S_slot, (j + 1) * S_slot): k_hist, v_hist (B, H, L, D) (views where the layout
        allows), hist_time (B, L) float32 from ``frame_time`` (B, N) float64 (the stored times
        or times relative to now), on the K/V device, and hist_valid (B, L)."""
        batch, heads, num_frames, slot_len, dim = self.keys.shape
        hist_len = num_frames * slot_len
        hist_time = (
            frame_time.to(torch.float32)
            .to(self.keys.device)[:, :, None]
            .expand(batch, num_frames, slot_len)
            .reshape(batch, hist_len)
        )
        return (
            self.keys.reshape(batch, heads, hist_len, dim),
            self.values.reshape(batch, heads, hist_len, dim),
            hist_time,
            self.token_valid.reshape(batch, hist_len),
        )


class LayerRing:
    """The FIFO of the last ``spec.capacity`` frames of one layer; empty, with no buffers,
    until the first `write`."""

    def __init__(self, spec: RingSpec) -> None:
        self.spec = spec
        self.num_frames = 0
        self.next_slot = 0
        self._buffers: RingFrames | None = None  # C slots, allocated by the first write

    @property
    def slot_len(self) -> int:
        """S_slot, tokens per slot (0 before the first write)."""
        return 0 if self._buffers is None else self._buffers.keys.shape[3]

    def chronological_slots(self) -> list[int]:
        """Slot indices from the oldest stored frame to the newest."""
        capacity = self.spec.capacity
        if self.num_frames < capacity:
            return list(range(self.num_frames))
        return [(self.next_slot + i) % capacity for i in range(capacity)]

    def newest_time(self) -> Tensor | None:
        """(B,) float64 time of the most recent frame, or None when empty."""
        if self.num_frames == 0 or self._buffers is None:
            return None
        return self._buffers.frame_time[:, (self.next_slot - 1) % self.spec.capacity]

    def clear(self) -> None:
        """Forget every frame; keep the buffers so that the next episode does not reallocate."""
        self.num_frames = 0
        self.next_slot = 0
        if self._buffers is not None:
            self._buffers.token_valid.zero_()

    def write(self, k: Tensor, v: Tensor, token_mask: Tensor | None, times: Tensor) -> None:
        """Store one frame in the next slot, evicting the oldest frame when full.

        k, v: (B, H, S, D) checked inputs; token_mask: (B, S) bool of the tokens kept, or None
        for all; times: (B,) float64 CPU.
        """
        seq_len = k.shape[2]
        buffers = self._buffers_for(seq_len)
        slot = self.next_slot
        if token_mask is None:
            buffers.keys[:, :, slot, :seq_len] = k
            buffers.values[:, :, slot, :seq_len] = v
            buffers.token_valid[:, slot, :seq_len] = True
        else:
            keep = token_mask[:, None, :, None]  # (B, 1, S, 1)
            buffers.keys[:, :, slot, :seq_len] = torch.where(keep, k, k.new_zeros(()))
            buffers.values[:, :, slot, :seq_len] = torch.where(keep, v, v.new_zeros(()))
            buffers.token_valid[:, slot, :seq_len] = token_mask
        # A shorter frame overwriting a longer one must not leave the old tail behind.
        buffers.keys[:, :, slot, seq_len:] = 0
        buffers.values[:, :, slot, seq_len:] = 0
        buffers.token_valid[:, slot, seq_len:] = False
        buffers.frame_time[:, slot] = times

        capacity = self.spec.capacity
        self.next_slot = (slot + 1) % capacity
        self.num_frames = min(self.num_frames + 1, capacity)

    def frames_in_slot_order(self) -> RingFrames:
        """Views of the stored frames in slot order (not time order).

        Slots 0..N-1 are exactly the stored frames, as the ring fills from slot 0; retrieval's
        softmax does not care about their order, so this costs no copy.
        """
        if self._buffers is None:
            return self.spec.zeros(0, 0)
        count = self.num_frames
        buffers = self._buffers
        return RingFrames(
            keys=buffers.keys[:, :, :count],
            values=buffers.values[:, :, :count],
            token_valid=buffers.token_valid[:, :count],
            frame_time=buffers.frame_time[:, :count],
        )

    def chronological(self) -> RingFrames:
        """Copies of the stored frames, oldest first (N = 0 when empty)."""
        if self._buffers is None:
            return self.spec.zeros(0, 0)
        order = self.chronological_slots()
        index = torch.tensor(order, dtype=torch.long, device=self.spec.device)
        buffers = self._buffers
        return RingFrames(
            keys=buffers.keys.index_select(2, index),
            values=buffers.values.index_select(2, index),
            token_valid=buffers.token_valid.index_select(1, index),
            frame_time=buffers.frame_time.index_select(1, torch.tensor(order, dtype=torch.long)),
        )

    # Buffers are always normal tensors, even when the first write happens under
    # torch.inference_mode() (as in a control loop): inference tensors could not be updated in
    # place by a later clear() or write outside inference mode.
    @classmethod
    @torch.inference_mode(False)
    def restore(
        cls, spec: RingSpec, num_frames: int, next_slot: int, frames: RingFrames
    ) -> LayerRing:
        """A ring holding ``frames`` (N = ``num_frames`` >= 1 frames, oldest first, already
        checked against ``spec``) with its next write going to ``next_slot``."""
        ring = cls(spec)
        ring.num_frames, ring.next_slot = num_frames, next_slot
        buffers = ring._buffers = spec.zeros(spec.capacity, frames.keys.shape[3])
        slots = ring.chronological_slots()
        device_slots = torch.tensor(slots, dtype=torch.long, device=spec.device)
        buffers.keys.index_copy_(2, device_slots, frames.keys.to(spec.device))
        buffers.values.index_copy_(2, device_slots, frames.values.to(spec.device))
        buffers.token_valid.index_copy_(1, device_slots, frames.token_valid.to(spec.device))
        cpu_slots = torch.tensor(slots, dtype=torch.long)
        buffers.frame_time.index_copy_(1, cpu_slots, frames.frame_time.detach().to("cpu"))
        return ring

    @torch.inference_mode(False)
    def _buffers_for(self, seq_len: int) -> RingFrames:
        """The buffers, allocated on first use or grown geometrically to hold ``seq_len``."""
        old_len = self.slot_len
        if self._buffers is not None and seq_len <= old_len:
            return self._buffers
        if self._buffers is None:
            new_len = seq_len
        else:
            grown = max(seq_len, math.ceil(old_len * _SLOT_GROWTH_FACTOR))
            grown = -(-grown // _SLOT_GRANULARITY) * _SLOT_GRANULARITY
            new_len = min(grown, self.spec.max_prefix_len)
        buffers = self.spec.zeros(self.spec.capacity, new_len)
        if self._buffers is not None:
            buffers.keys[:, :, :, :old_len] = self._buffers.keys
            buffers.values[:, :, :, :old_len] = self._buffers.values
            buffers.token_valid[:, :, :old_len] = self._buffers.token_valid
            buffers.frame_time = self._buffers.frame_time
        self._buffers = buffers
        return buffers
