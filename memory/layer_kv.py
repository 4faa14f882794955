"""Layer-wise temporal KV memory (TempoFit): a FIFO of past frames' pre-RoPE prefix K/V per layer.

Shapes: B = batch (independent sessions), H = KV heads, S = prefix tokens of the current frame,
D = head dim, C = capacity (frames kept), N = frames stored (<= C), S_slot = slot length of one
stored frame, L = N * S_slot flattened history tokens.

Storage, per selected layer, is one preallocated ring buffer ``keys``/``values`` of shape
(B, H, C, S_slot, D) in the model's dtype, a token mask (B, C, S_slot) and frame times (B, C).
A push writes one slot in place (no copy of the other frames). The slot length starts at the
first frame's prefix length and grows geometrically (x1.25, rounded up to 16 tokens, capped at
``max_prefix_len``) when a longer frame arrives, so growth copies are amortised O(1) per push and
storage is bounded by 2 * B * H * C * max_prefix_len * D elements per layer. Shorter frames are
padded with zeros and masked out.

Times are kept in float64 on the CPU: they are tiny, order checks need no device sync, and the
retrieval kernel receives gaps relative to the current time so that float32 keeps full precision
even for epoch-second clocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import kernels
from memory.episodic.checks import is_int
from memory.tempofit_config import TempoFitConfig

STATE_FORMAT = "tempomem.LayerwiseKVMemory/1"

# Fields that define what the stored state means; a state saved under other values cannot be
# loaded. The others (beta, alpha, retrieval, loading, rescale, eps, backend) only change how
# the state is read, so they may differ, e.g. to sweep beta over one recorded episode.
_STATE_DEFINING_CONFIG_FIELDS = ("layers", "capacity", "max_prefix_len", "gap_unit")

_SLOT_GROWTH_FACTOR = 1.25
_SLOT_GRANULARITY = 16

_DTYPES_BY_NAME = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
}


@dataclass
class _LayerRing:
    """The FIFO of one layer. ``keys is None`` until the first push allocates it."""

    keys: Tensor | None = None  # (B, H, C, S_slot, D), model dtype, zeros at padding
    values: Tensor | None = None  # (B, H, C, S_slot, D)
    token_valid: Tensor | None = None  # (B, C, S_slot) bool
    frame_time: Tensor | None = None  # (B, C) float64, CPU
    num_frames: int = 0
    next_slot: int = 0

    @property
    def slot_len(self) -> int:
        return 0 if self.keys is None else self.keys.shape[3]

    def chronological_slots(self, capacity: int) -> list[int]:
        """Slot indices from the oldest stored frame to the newest."""
        if self.num_frames < capacity:
            return list(range(self.num_frames))
        return [(self.next_slot + i) % capacity for i in range(capacity)]

    def newest_time(self) -> Tensor | None:
        """(B,) float64 time of the most recent frame, or None when empty."""
        if self.num_frames == 0 or self.frame_time is None:
            return None
        capacity = self.frame_time.shape[1]
        return self.frame_time[:, (self.next_slot - 1) % capacity]


class LayerwiseKVMemory:
    """Per-layer FIFO of the last ``config.capacity`` frames' prefix K/V, with FGTB retrieval.

    Typical use at a selected layer, once per control step at time ``t``::

        k_hat, v_hat = memory.load(layer, k_t, v_t, t)   # before RoPE and attention
        memory.push(layer, k_t, v_t, t)                   # the raw frame, after the step

    All sessions of a batch push together (one slot per push), each with its own time.
    Times must not go backwards within a session: a push or retrieval at a time earlier than
    the newest stored frame of that session is an error (``reset()`` starts over).

    Args:
        config: which layers, how many frames, the bias and loading options.
        num_kv_heads: H, key/value heads of the model at those layers.
        head_dim: D.
        batch_size: B, independent sessions served together.
        dtype: the model's K/V dtype; inputs must have it and storage uses it.
        device: where K/V are stored and retrieval runs.
    """

    def __init__(
        self,
        config: TempoFitConfig,
        num_kv_heads: int,
        head_dim: int,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(config, TempoFitConfig):
            raise ValueError(f"config must be a TempoFitConfig, got {type(config).__name__}")
        for name, value in (
            ("num_kv_heads", num_kv_heads),
            ("head_dim", head_dim),
            ("batch_size", batch_size),
        ):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dtype not in _DTYPES_BY_NAME.values():
            raise ValueError(
                f"dtype must be one of {sorted(_DTYPES_BY_NAME)} (floating point), got {dtype}"
            )
        self.config = config
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device)
        self._rings: dict[int, _LayerRing] = {layer: _LayerRing() for layer in config.layers}
        self._slopes: Tensor | None = None

    @property
    def layers(self) -> list[int]:
        return list(self.config.layers)

    def num_frames(self, layer: int) -> int:
        """Frames currently stored at ``layer`` (0 .. capacity), the same for every session."""
        return self._ring(layer).num_frames

    def slot_len(self, layer: int) -> int:
        """S_slot, tokens per stored frame at ``layer`` (0 before the first push)."""
        return self._ring(layer).slot_len

    def check_time(self, t: float | Tensor, action: str = "step") -> None:
        """Raise a ValueError if ``t`` (float or (B,)) is not finite or is earlier than a
        session's newest stored frame at any layer; lets a caller fail before a forward."""
        times = self._session_times(t)
        for layer, ring in self._rings.items():
            self._check_time_order(layer, ring, times, action)

    def reset(self) -> None:
        """Forget every frame of every session and layer (a new episode); keeps the buffers so
        that the next episode does not reallocate."""
        for ring in self._rings.values():
            ring.num_frames = 0
            ring.next_slot = 0
            if ring.token_valid is not None:
                ring.token_valid.zero_()

    def push(
        self,
        layer: int,
        k: Tensor,
        v: Tensor,
        t: float | Tensor,
        prefix_lens: Tensor | list[int] | None = None,
    ) -> None:
        """Store one frame's prefix K/V at ``layer``, evicting the oldest frame when full.

        Args:
            layer: one of ``config.layers``.
            k, v: (B, H, S, D) pre-RoPE prefix keys and values, in the memory's dtype.
            t: the frame's time in ``config.gap_unit``: a float for every session, or (B,).
            prefix_lens: optional (B,) ints in 1..S; session b keeps only its first
                ``prefix_lens[b]`` tokens (the rest may be padding with any content).
        """
        self.push_frame({layer: (k, v)}, t, prefix_lens)

    def push_frame(
        self,
        frames: Mapping[int, tuple[Tensor, Tensor]],
        t: float | Tensor,
        prefix_lens: Tensor | list[int] | None = None,
    ) -> None:
        """Store one frame at several layers, all or nothing: every layer's ``(k, v)`` is
        validated (shapes, NaN/inf, time order) before any is written. Arguments as ``push``."""
        times = self._session_times(t)
        checked = [
            self._checked_push(layer, k, v, times, prefix_lens) for layer, (k, v) in frames.items()
        ]
        for ring, k, v, token_mask in checked:
            self._write_slot(ring, k, v, token_mask, times)

    def _checked_push(
        self,
        layer: int,
        k: Tensor,
        v: Tensor,
        times: Tensor,
        prefix_lens: Tensor | list[int] | None,
    ) -> tuple[_LayerRing, Tensor, Tensor, Tensor | None]:
        ring = self._ring(layer)
        self._check_kv_pair("k", k, "v", v)
        token_mask = self._token_mask(prefix_lens, k.shape[2])  # (B, S) or None for all tokens
        self._check_finite("k", k, token_mask, f" at layer {layer}")
        self._check_finite("v", v, token_mask, f" at layer {layer}")
        self._check_time_order(layer, ring, times, "push")
        return ring, k.detach(), v.detach(), token_mask

    def _write_slot(
        self, ring: _LayerRing, k: Tensor, v: Tensor, token_mask: Tensor | None, times: Tensor
    ) -> None:
        seq_len = k.shape[2]
        self._ensure_slot_len(ring, seq_len)
        assert ring.keys is not None and ring.values is not None
        assert ring.token_valid is not None and ring.frame_time is not None
        slot = ring.next_slot
        if token_mask is None:
            ring.keys[:, :, slot, :seq_len] = k
            ring.values[:, :, slot, :seq_len] = v
            ring.token_valid[:, slot, :seq_len] = True
        else:
            keep = token_mask[:, None, :, None]  # (B, 1, S, 1)
            ring.keys[:, :, slot, :seq_len] = torch.where(keep, k, k.new_zeros(()))
            ring.values[:, :, slot, :seq_len] = torch.where(keep, v, v.new_zeros(()))
            ring.token_valid[:, slot, :seq_len] = token_mask
        # A shorter frame overwriting a longer one must not leave the old tail behind.
        ring.keys[:, :, slot, seq_len:] = 0
        ring.values[:, :, slot, seq_len:] = 0
        ring.token_valid[:, slot, seq_len:] = False
        ring.frame_time[:, slot] = times

        capacity = self.config.capacity
        ring.next_slot = (slot + 1) % capacity
        ring.num_frames = min(ring.num_frames + 1, capacity)

    def retrieve(self, layer: int, query: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        """FGTB retrieval: ``W = softmax(query K_hist^T / sqrt(D) + B)``; ``(W K_hist, W V_hist)``.

        Args:
            layer: one of ``config.layers``.
            query: (B, H, S, D) current prefix keys ('k2k') or group-mean queries ('q2k').
            t: current time, a float or (B,); not earlier than any session's newest frame.

        Returns:
            (k_ctx, v_ctx), each (B, H, S, D) in the memory's dtype; zeros when empty.
            ``bias_scale = beta * (alpha or S)`` with S = ``query.shape[2]``.
        """
        ring = self._ring(layer)
        self._check_kv_input("query", query)
        self._check_finite("query", query, None)
        times = self._session_times(t)
        self._check_time_order(layer, ring, times, "retrieve")
        if ring.num_frames == 0:
            return torch.zeros_like(query), torch.zeros_like(query)
        return self._fgtb(ring, query, times)

    def load(
        self,
        layer: int,
        k_t: Tensor,
        v_t: Tensor,
        t: float | Tensor,
        query: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Residual loading: ``K~ = K_t + K_ctx``, then ``K^ = K~ * ||K_t|| / max(||K~||, eps)``.

        The rescale is per token and head over D (skipped when ``config.rescale`` is False);
        the same for V. With an empty memory ``(k_t, v_t)`` themselves are returned.

        Args:
            layer: one of ``config.layers``.
            k_t, v_t: (B, H, S, D) the current frame's pre-RoPE keys and values.
            t: current time, a float or (B,).
            query: (B, H, S, D) group-mean queries; required for 'q2k', must be None for 'k2k'
                (which retrieves with ``k_t``).

        Returns:
            (k_hat, v_hat), each (B, H, S, D) in the memory's dtype.
        """
        if self.config.loading != "residual":
            raise ValueError(
                f"load() implements residual loading but config.loading is "
                f"{self.config.loading!r}; for the concat ablation use history(layer)"
            )
        ring = self._ring(layer)
        self._check_kv_pair("k_t", k_t, "v_t", v_t)
        if self.config.retrieval == "k2k":
            if query is not None:
                raise ValueError(
                    "query must be None with config.retrieval='k2k' (k_t is the query); "
                    "pass it only with retrieval='q2k'"
                )
            query = k_t
        elif query is None:
            raise ValueError("config.retrieval='q2k' needs the group-mean query (B, H, S, D)")
        else:
            self._check_kv_input("query", query)
            if query.shape != k_t.shape:
                raise ValueError(
                    f"query must have the shape of k_t {tuple(k_t.shape)}, got {tuple(query.shape)}"
                )
        self._check_finite("k_t", k_t, None)
        self._check_finite("v_t", v_t, None)
        if query is not k_t:
            self._check_finite("query", query, None)
        times = self._session_times(t)
        self._check_time_order(layer, ring, times, "load")
        if ring.num_frames == 0:
            return k_t, v_t
        k_ctx, v_ctx = self._fgtb(ring, query, times)
        return self._residual(k_t, k_ctx), self._residual(v_t, v_ctx)

    def history(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The stored frames, oldest first, for the concat ablation (copies).

        Returns:
            k_hist, v_hist: (B, H, L, D), frame j at tokens [j * S_slot, (j + 1) * S_slot);
            hist_time: (B, L) float32 time of each token's frame (absolute; float32 loses
            sub-unit precision beyond ~2**24 units, so keep clocks episode-relative);
            hist_valid: (B, L) bool, False for padding.
        """
        ring = self._ring(layer)
        batch, heads, dim = self.batch_size, self.num_kv_heads, self.head_dim
        if ring.num_frames == 0 or ring.keys is None:
            empty_kv = torch.zeros(batch, heads, 0, dim, dtype=self.dtype, device=self.device)
            return (
                empty_kv,
                empty_kv.clone(),
                torch.zeros(batch, 0, dtype=torch.float32, device=self.device),
                torch.zeros(batch, 0, dtype=torch.bool, device=self.device),
            )
        assert ring.values is not None and ring.token_valid is not None
        assert ring.frame_time is not None
        keys, values, token_valid, frame_time = self._chronological(ring)
        num_frames, slot_len = ring.num_frames, ring.slot_len
        hist_len = num_frames * slot_len
        hist_time = (
            frame_time.to(torch.float32)
            .to(self.device)[:, :, None]
            .expand(batch, num_frames, slot_len)
            .reshape(batch, hist_len)
        )
        return (
            keys.reshape(batch, heads, hist_len, dim),
            values.reshape(batch, heads, hist_len, dim),
            hist_time,
            token_valid.reshape(batch, hist_len),
        )

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of tensors and plain JSON values (never pickled objects).

        Keys: ``format``, ``config`` (dict), ``num_kv_heads``, ``head_dim``, ``batch_size``,
        ``dtype`` (e.g. "float32"), and per layer i ``layer.{i}.num_frames`` and
        ``layer.{i}.next_slot`` (ints; the ring position, so that a restored memory sums the
        history in the same order and retrieves bit-identically) plus, when it is not empty,
        oldest frame first: ``layer.{i}.keys`` / ``layer.{i}.values``
        (B, H, N, S_slot, D), ``layer.{i}.token_valid`` (B, N, S_slot) bool and
        ``layer.{i}.frame_time`` (B, N) float64. Tensors are fresh copies on the memory's device.
        """
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "config": self.config.model_dump(mode="json"),
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "batch_size": self.batch_size,
            "dtype": _dtype_name(self.dtype),
        }
        for layer, ring in self._rings.items():
            state[f"layer.{layer}.num_frames"] = ring.num_frames
            state[f"layer.{layer}.next_slot"] = ring.next_slot
            if ring.num_frames == 0:
                continue
            keys, values, token_valid, frame_time = self._chronological(ring)
            state[f"layer.{layer}.keys"] = keys.contiguous()
            state[f"layer.{layer}.values"] = values.contiguous()
            state[f"layer.{layer}.token_valid"] = token_valid.contiguous()
            state[f"layer.{layer}.frame_time"] = frame_time.contiguous()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the stored frames with those of ``state`` (from ``state_dict``).

        Checks the format, that the config agrees on the state-defining fields (layers,
        capacity, max_prefix_len, gap_unit), head count, head dim, batch size, dtype, every
        tensor's shape and dtype, finite values and per-session time order. Raises ValueError
        naming the problem; on error the memory is left unchanged.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"state must be a mapping, got {type(state).__name__}")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"state format must be {STATE_FORMAT!r}, got {state.get('format')!r}")
        self._check_state_config(state.get("config"))
        for name, expected in (
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("batch_size", self.batch_size),
            ("dtype", _dtype_name(self.dtype)),
        ):
            if state.get(name) != expected:
                raise ValueError(
                    f"state {name} is {state.get(name)!r}, this memory has {expected!r}"
                )

        expected_keys = {"format", "config", "num_kv_heads", "head_dim", "batch_size", "dtype"}
        new_rings: dict[int, _LayerRing] = {}
        for layer in self.config.layers:
            ring, keys_used = self._ring_from_state(layer, state)
            new_rings[layer] = ring
            expected_keys |= keys_used
        unexpected = sorted(set(state) - expected_keys)
        if unexpected:
            raise ValueError(f"state has unexpected keys {unexpected}")
        self._rings = new_rings

    # ----------------------------------------------------------------------------------------
    # internals

    def _ring(self, layer: int) -> _LayerRing:
        ring = self._rings.get(layer) if isinstance(layer, int) else None
        if ring is None:
            raise ValueError(
                f"unknown layer {layer!r}: this memory holds layers {list(self.config.layers)}"
            )
        return ring

    def _head_slopes(self) -> Tensor:
        if self._slopes is None:
            slopes = kernels.alibi_slopes(self.num_kv_heads)
            self._slopes = slopes.to(device=self.device, dtype=torch.float32)
        return self._slopes

    def _fgtb(self, ring: _LayerRing, query: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """Run kernels.fgtb_retrieve of ``query`` (B, H, S, D) at ``times`` (B,) over a
        non-empty ring."""
        assert ring.keys is not None and ring.values is not None
        assert ring.token_valid is not None and ring.frame_time is not None
        # Slots 0..N-1 are exactly the stored frames (the ring fills from slot 0), and the
        # softmax does not care about their order: a view, no copy.
        num_frames, slot_len = ring.num_frames, ring.slot_len
        batch, heads, dim = self.batch_size, self.num_kv_heads, self.head_dim
        hist_len = num_frames * slot_len
        k_hist = ring.keys[:, :, :num_frames].reshape(batch, heads, hist_len, dim)
        v_hist = ring.values[:, :, :num_frames].reshape(batch, heads, hist_len, dim)
        hist_valid = ring.token_valid[:, :num_frames].reshape(batch, hist_len)
        # |t - tau| = |0 - (tau - t)|: subtracting in float64 first keeps large clocks exact.
        frame_offset = (ring.frame_time[:, :num_frames] - times[:, None]).to(torch.float32)
        hist_time = (
            frame_offset.to(self.device)[:, :, None]
            .expand(batch, num_frames, slot_len)
            .reshape(batch, hist_len)
        )
        now = torch.zeros(batch, dtype=torch.float32, device=self.device)
        k_ctx, v_ctx = kernels.fgtb_retrieve(
            query,
            k_hist,
            v_hist,
            hist_time,
            hist_valid,
            now,
            self._head_slopes(),
            self.config.bias_scale(query.shape[2]),
            backend=self.config.backend,
            # Every stored frame and the query were checked at push / entry; rescanning the
            # whole history each step would cost a full pass (and a host sync on CUDA).
            check_finite=False,
        )
        return k_ctx, v_ctx

    def _residual(self, x_t: Tensor, x_ctx: Tensor) -> Tensor:
        """``x_t + x_ctx``, rescaled per (b, h, s) to ``||x_t||`` when configured; fp32 inside."""
        current = x_t.float()
        loaded = current + x_ctx.float()
        if self.config.rescale:
            target_norm = torch.linalg.vector_norm(current, dim=-1, keepdim=True)
            loaded_norm = torch.linalg.vector_norm(loaded, dim=-1, keepdim=True)
            loaded = loaded * (target_norm / loaded_norm.clamp_min(self.config.eps))
        return loaded.to(x_t.dtype)

    def _chronological(self, ring: _LayerRing) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Copies of the stored frames, oldest first: keys/values (B, H, N, S_slot, D),
        token_valid (B, N, S_slot), frame_time (B, N) float64 (CPU)."""
        assert ring.keys is not None and ring.values is not None
        assert ring.token_valid is not None and ring.frame_time is not None
        order = ring.chronological_slots(self.config.capacity)
        index = torch.tensor(order, dtype=torch.long, device=self.device)
        return (
            ring.keys.index_select(2, index),
            ring.values.index_select(2, index),
            ring.token_valid.index_select(1, index),
            ring.frame_time.index_select(1, torch.tensor(order, dtype=torch.long)),
        )

    # Memory state is always made of normal tensors, even when the first push happens under
    # torch.inference_mode() (as in a control loop): inference tensors could not be updated in
    # place by a later reset() or push outside inference mode.
    @torch.inference_mode(False)
    def _ensure_slot_len(self, ring: _LayerRing, seq_len: int) -> None:
        """Allocate the ring on first use, or grow its slots geometrically to hold ``seq_len``."""
        old_len = ring.slot_len
        if seq_len <= old_len:
            return
        if ring.keys is None:
            new_len = seq_len
        else:
            grown = max(seq_len, math.ceil(old_len * _SLOT_GROWTH_FACTOR))
            grown = -(-grown // _SLOT_GRANULARITY) * _SLOT_GRANULARITY
            new_len = min(grown, self.config.max_prefix_len)
        batch, heads, capacity, dim = (
            self.batch_size,
            self.num_kv_heads,
            self.config.capacity,
            self.head_dim,
        )
        kv_shape = (batch, heads, capacity, new_len, dim)
        keys = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        values = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        token_valid = torch.zeros(batch, capacity, new_len, dtype=torch.bool, device=self.device)
        if ring.keys is not None:
            assert ring.values is not None and ring.token_valid is not None
            keys[:, :, :, :old_len] = ring.keys
            values[:, :, :, :old_len] = ring.values
            token_valid[:, :, :old_len] = ring.token_valid
        ring.keys, ring.values, ring.token_valid = keys, values, token_valid
        if ring.frame_time is None:
            ring.frame_time = torch.zeros(batch, capacity, dtype=torch.float64)

    def _check_kv_pair(self, k_name: str, k: Any, v_name: str, v: Any) -> None:
        """Both fit ``_check_kv_input`` and have the same shape."""
        self._check_kv_input(k_name, k)
        self._check_kv_input(v_name, v)
        if v.shape != k.shape:
            raise ValueError(
                f"{k_name} and {v_name} must have the same shape, "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )

    def _check_kv_input(self, name: str, x: Any) -> None:
        """A (B, H, S, D) tensor of this memory's batch size, heads, head dim, dtype, device."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, S, D), got {tuple(x.shape)}")
        batch, heads, seq_len, dim = x.shape
        if batch != self.batch_size:
            raise ValueError(f"{name} has batch size {batch}, this memory has {self.batch_size}")
        if heads != self.num_kv_heads:
            raise ValueError(
                f"{name} has {heads} heads, this memory has {self.num_kv_heads} KV heads"
            )
        if dim != self.head_dim:
            raise ValueError(f"{name} has head dim {dim}, this memory has {self.head_dim}")
        if seq_len < 1:
            raise ValueError(f"{name} has no tokens (S = 0)")
        if seq_len > self.config.max_prefix_len:
            raise ValueError(
                f"{name} has prefix length {seq_len} > max_prefix_len {self.config.max_prefix_len}"
            )
        if x.dtype != self.dtype:
            raise ValueError(f"{name} has dtype {x.dtype}, this memory stores {self.dtype}")
        if not _same_device(x.device, self.device):
            raise ValueError(f"{name} is on {x.device}, this memory is on {self.device}")

    @staticmethod
    def _check_finite(name: str, x: Tensor, token_mask: Tensor | None, where: str = "") -> None:
        """No NaN/inf in ``x`` (B, H, S, D), ignoring tokens outside ``token_mask`` (B, S)."""
        bad = ~torch.isfinite(x)
        if token_mask is not None:
            bad &= token_mask[:, None, :, None]
        if bool(bad.any()):
            b, h, s, _ = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{name} contains NaN or inf (first at batch {b}, head {h}, token {s}){where}"
            )

    def _token_mask(self, prefix_lens: Tensor | list[int] | None, seq_len: int) -> Tensor | None:
        """(B, S) bool mask of the tokens kept per session, or None when all are kept."""
        if prefix_lens is None:
            return None
        lens = torch.as_tensor(prefix_lens)
        if lens.dtype.is_floating_point or lens.dtype.is_complex or lens.dtype == torch.bool:
            raise ValueError(f"prefix_lens must be integers, got dtype {lens.dtype}")
        if lens.shape != (self.batch_size,):
            raise ValueError(
                f"prefix_lens must have shape ({self.batch_size},), got {tuple(lens.shape)}"
            )
        lens = lens.to(device="cpu", dtype=torch.long)
        # seq_len <= max_prefix_len is already checked, so this bounds prefix_lens too.
        for b, length in enumerate(lens.tolist()):
            if not 1 <= length <= seq_len:
                raise ValueError(f"prefix_lens[{b}] = {length} must be in 1..S = 1..{seq_len}")
        if bool((lens == seq_len).all()):
            return None
        positions = torch.arange(seq_len)
        return (positions[None, :] < lens[:, None]).to(self.device)

    def _session_times(self, t: Any) -> Tensor:
        """(B,) float64 CPU times from a float or a scalar / (B,) tensor; finite."""
        if isinstance(t, Tensor):
            if t.dtype == torch.bool or t.dtype.is_complex:
                raise ValueError(f"t must be a real number or tensor, got dtype {t.dtype}")
            times = t.detach().to(device="cpu", dtype=torch.float64)
            if times.dim() == 0:
                times = times.expand(self.batch_size)
            elif times.shape != (self.batch_size,):
                raise ValueError(
                    f"t must be a float or have shape ({self.batch_size},), "
                    f"got {tuple(times.shape)}"
                )
        elif isinstance(t, int | float) and not isinstance(t, bool):
            times = torch.full((self.batch_size,), float(t), dtype=torch.float64)
        else:
            raise ValueError(f"t must be a float or a ({self.batch_size},) tensor, got {t!r}")
        not_finite = ~torch.isfinite(times)
        if bool(not_finite.any()):
            b = int(not_finite.nonzero()[0])
            raise ValueError(f"t must be finite; session {b} has t = {times[b].item()}")
        return times

    @staticmethod
    def _check_time_order(layer: int, ring: _LayerRing, times: Tensor, action: str) -> None:
        newest = ring.newest_time()
        if newest is None:
            return
        backwards = times < newest
        if bool(backwards.any()):
            b = int(backwards.nonzero()[0])
            raise ValueError(
                f"time went backwards for session {b} at layer {layer}: {action} at "
                f"t = {times[b].item()} is earlier than its newest stored frame at "
                f"t = {newest[b].item()} (call reset() to start a new episode)"
            )

    def _check_state_config(self, config_state: Any) -> None:
        if not isinstance(config_state, Mapping):
            raise ValueError(f"state config must be a dict, got {type(config_state).__name__}")
        try:
            saved = TempoFitConfig.model_validate(dict(config_state))
        except Exception as error:  # pydantic's ValidationError, re-raised as ValueError
            raise ValueError(f"state config is invalid: {error}") from error
        differing = [
            f"{field} (state {getattr(saved, field)!r}, memory {getattr(self.config, field)!r})"
            for field in _STATE_DEFINING_CONFIG_FIELDS
            if getattr(saved, field) != getattr(self.config, field)
        ]
        if differing:
            raise ValueError(f"state config is incompatible: {', '.join(differing)}")

    @torch.inference_mode(False)  # normal tensors, as in _ensure_slot_len
    def _ring_from_state(self, layer: int, state: Mapping[str, Any]) -> tuple[_LayerRing, set[str]]:
        """Build one layer's ring from ``state``; returns it and the keys it consumed."""
        prefix = f"layer.{layer}."
        count_key, slot_key = prefix + "num_frames", prefix + "next_slot"
        num_frames, next_slot = state.get(count_key), state.get(slot_key)
        capacity = self.config.capacity
        for key, value in ((count_key, num_frames), (slot_key, next_slot)):
            if not is_int(value):
                raise ValueError(f"state {key} must be an int, got {value!r}")
        assert isinstance(num_frames, int) and isinstance(next_slot, int)
        if not 0 <= num_frames <= capacity:
            raise ValueError(f"state {count_key} = {num_frames} must be in 0..{capacity}")
        # The ring fills from slot 0, so until it is full the next slot is the frame count.
        ring_full = num_frames == capacity
        slot_fits = (0 <= next_slot < capacity) if ring_full else (next_slot == num_frames)
        if not slot_fits:
            raise ValueError(
                f"state {slot_key} = {next_slot} does not fit {num_frames} frames in a ring of "
                f"{capacity}"
            )
        ring = _LayerRing()
        tensor_names = ("keys", "values", "token_valid", "frame_time")
        if num_frames == 0:
            return ring, {count_key, slot_key}

        tensors: dict[str, Tensor] = {}
        for name in tensor_names:
            value = state.get(prefix + name)
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"state {prefix + name} must be a tensor, got {type(value).__name__}"
                )
            tensors[name] = value
        keys, values = tensors["keys"], tensors["values"]
        token_valid, frame_time = tensors["token_valid"], tensors["frame_time"]
        batch, heads, dim = self.batch_size, self.num_kv_heads, self.head_dim
        slot_len = keys.shape[3] if keys.dim() == 5 else -1
        if not 1 <= slot_len <= self.config.max_prefix_len:
            raise ValueError(
                f"state {prefix}keys must have shape (B, H, N, S_slot, D) with 1 <= S_slot <= "
                f"{self.config.max_prefix_len}, got {tuple(keys.shape)}"
            )
        expected = {
            "keys": ((batch, heads, num_frames, slot_len, dim), self.dtype),
            "values": ((batch, heads, num_frames, slot_len, dim), self.dtype),
            "token_valid": ((batch, num_frames, slot_len), torch.bool),
            "frame_time": ((batch, num_frames), torch.float64),
        }
        for name, (shape, dtype) in expected.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"state {prefix + name} has shape {tuple(tensor.shape)}, expected {shape}"
                )
            if tensor.dtype != dtype:
                raise ValueError(
                    f"state {prefix + name} has dtype {tensor.dtype}, expected {dtype}"
                )
        for name in ("keys", "values", "frame_time"):
            if not bool(torch.isfinite(tensors[name]).all()):
                raise ValueError(f"state {prefix + name} contains NaN or inf")
        frame_time = frame_time.detach().to("cpu")
        if num_frames > 1 and bool((frame_time[:, 1:] < frame_time[:, :-1]).any()):
            raise ValueError(f"state {prefix}frame_time goes backwards within a session")

        kv_shape = (batch, heads, capacity, slot_len, dim)
        ring.keys = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        ring.values = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        ring.token_valid = torch.zeros(
            batch, capacity, slot_len, dtype=torch.bool, device=self.device
        )
        ring.frame_time = torch.zeros(batch, capacity, dtype=torch.float64)
        ring.num_frames, ring.next_slot = num_frames, next_slot
        slots = ring.chronological_slots(capacity)
        device_slots = torch.tensor(slots, dtype=torch.long, device=self.device)
        ring.keys.index_copy_(2, device_slots, keys.to(self.device))
        ring.values.index_copy_(2, device_slots, values.to(self.device))
        ring.token_valid.index_copy_(1, device_slots, token_valid.to(self.device))
        ring.frame_time.index_copy_(1, torch.tensor(slots, dtype=torch.long), frame_time)
        return ring, {count_key, slot_key} | {prefix + name for name in tensor_names}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_device(actual: torch.device, expected: torch.device) -> bool:
    if actual.type != expected.type:
        return False
    return expected.index is None or actual.index == expected.index
