"""Layer-wise temporal KV memory (TempoFit): a FIFO of past frames' pre-RoPE prefix K/V per layer.

Shapes: B = batch (independent sessions), H = KV heads, S = prefix tokens of the current frame,
D = head dim, C = capacity (frames kept), N = frames stored (<= C), S_slot = slot length of one
stored frame, L = N * S_slot flattened history tokens.

Storage, per selected layer, is one `memory.layer_ring.LayerRing`: a preallocated ring buffer
``keys``/``values`` of shape (B, H, C, S_slot, D) in the model's dtype, a token mask
(B, C, S_slot) and frame times (B, C). A push writes one slot in place (no copy of the other
frames). The slot length starts at the first frame's prefix length and grows geometrically
(x1.25, rounded up to 16 tokens, capped at ``max_prefix_len``) when a longer frame arrives, so
growth copies are amortised O(1) per push and storage is bounded by
2 * B * H * C * max_prefix_len * D elements per layer. Shorter frames are padded with zeros and
masked out. Inputs are checked by `memory.layer_kv_checks`; the state-dict format lives in
`memory.layer_kv_state`.

Times are kept in float64 on the CPU: they are tiny, order checks need no device sync, and the
retrieval kernel receives gaps relative to the current time so that float32 keeps full precision
even for epoch-second clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

import kernels
from memory import layer_kv_checks as checks
from memory.layer_kv_state import STATE_FORMAT, memory_state, rings_from_state
from memory.layer_ring import LayerRing, RingSpec
from memory.tempofit_config import TempoFitConfig

__all__ = ["STATE_FORMAT", "LayerwiseKVMemory"]


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
        checks.check_sizes(num_kv_heads=num_kv_heads, head_dim=head_dim, batch_size=batch_size)
        checks.check_storage_dtype(dtype)
        self.config = config
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device)
        self._spec = RingSpec(
            batch_size=batch_size,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            capacity=config.capacity,
            max_prefix_len=config.max_prefix_len,
            dtype=dtype,
            device=self.device,
        )
        self._rings: dict[int, LayerRing] = {
            layer: LayerRing(self._spec) for layer in config.layers
        }
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
        times = checks.session_times(self.batch_size, t)
        for layer, ring in self._rings.items():
            checks.check_time_order(layer, ring, times, action)

    def reset(self) -> None:
        """Forget every frame of every session and layer (a new episode); keeps the buffers so
        that the next episode does not reallocate."""
        for ring in self._rings.values():
            ring.clear()

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
        times = checks.session_times(self.batch_size, t)
        checked = [
            self._checked_push(layer, k, v, times, prefix_lens) for layer, (k, v) in frames.items()
        ]
        for ring, k, v, token_mask in checked:
            ring.write(k, v, token_mask, times)

    def _checked_push(
        self,
        layer: int,
        k: Tensor,
        v: Tensor,
        times: Tensor,
        prefix_lens: Tensor | list[int] | None,
    ) -> tuple[LayerRing, Tensor, Tensor, Tensor | None]:
        ring = self._ring(layer)
        checks.check_kv_pair(self._spec, "k", k, "v", v)
        token_mask = checks.token_mask(self._spec, prefix_lens, k.shape[2])  # (B, S) or None
        checks.check_finite("k", k, token_mask, f" at layer {layer}")
        checks.check_finite("v", v, token_mask, f" at layer {layer}")
        checks.check_time_order(layer, ring, times, "push")
        return ring, k.detach(), v.detach(), token_mask

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
        checks.check_kv_input(self._spec, "query", query)
        checks.check_finite("query", query, None)
        times = checks.session_times(self.batch_size, t)
        checks.check_time_order(layer, ring, times, "retrieve")
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
        checks.check_kv_pair(self._spec, "k_t", k_t, "v_t", v_t)
        query = self._retrieval_query(k_t, query)
        checks.check_finite("k_t", k_t, None)
        checks.check_finite("v_t", v_t, None)
        if query is not k_t:
            checks.check_finite("query", query, None)
        times = checks.session_times(self.batch_size, t)
        checks.check_time_order(layer, ring, times, "load")
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
        frames = self._ring(layer).chronological()
        return frames.flattened(frames.frame_time)

    def state_dict(self) -> dict[str, Any]:
        """A flat dict of tensors and plain JSON values (never pickled objects).

        Keys: ``format``, ``config`` (dict), ``num_kv_heads``, ``head_dim``, ``batch_size``,
        ``dtype`` (e.g. "float32"), and per layer i ``layer.{i}.num_frames`` and
        ``layer.{i}.next_slot`` (ints; the ring position, so that a restored memory sums the
        history in the same order and retrieves bit-identically) plus, when it is not empty,
        oldest frame first: ``layer.{i}.keys`` / ``layer.{i}.values``
        (B, H, N, S_slot, D), ``layer.{i}.token_valid`` (B, N, S_slot) bool and
        ``layer.{i}.frame_time`` (B, N) float64. Tensors are fresh copies on the memory's device.
        The format is written and read by `memory.layer_kv_state`.
        """
        return memory_state(self.config, self._spec, self._rings)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the stored frames with those of ``state`` (from ``state_dict``).

        Checks the format, that the config agrees on the state-defining fields (layers,
        capacity, max_prefix_len, gap_unit), head count, head dim, batch size, dtype, every
        tensor's shape and dtype, finite values and per-session time order. Raises ValueError
        naming the problem; on error the memory is left unchanged.
        """
        self._rings = rings_from_state(self.config, self._spec, state)

    # ----------------------------------------------------------------------------------------
    # internals

    def _ring(self, layer: int) -> LayerRing:
        ring = self._rings.get(layer) if isinstance(layer, int) else None
        if ring is None:
            raise ValueError(
                f"unknown layer {layer!r}: this memory holds layers {list(self.config.layers)}"
            )
        return ring

    def _retrieval_query(self, k_t: Tensor, query: Tensor | None) -> Tensor:
        """The query of `load`: ``k_t`` for 'k2k'; the given (checked) ``query`` for 'q2k'."""
        if self.config.retrieval == "k2k":
            if query is not None:
                raise ValueError(
                    "query must be None with config.retrieval='k2k' (k_t is the query); "
                    "pass it only with retrieval='q2k'"
                )
            return k_t
        if query is None:
            raise ValueError("config.retrieval='q2k' needs the group-mean query (B, H, S, D)")
        checks.check_kv_input(self._spec, "query", query)
        if query.shape != k_t.shape:
            raise ValueError(
                f"query must have the shape of k_t {tuple(k_t.shape)}, got {tuple(query.shape)}"
            )
        return query

    def _head_slopes(self) -> Tensor:
        if self._slopes is None:
            slopes = kernels.alibi_slopes(self.num_kv_heads)
            self._slopes = slopes.to(device=self.device, dtype=torch.float32)
        return self._slopes

    def _fgtb(self, ring: LayerRing, query: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """kernels.fgtb_forward of ``query`` (B, H, S, D) at ``times`` (B,) over a non-empty
        ring, its frames in slot order (views, no copy)."""
        frames = ring.frames_in_slot_order()
        # |t - tau| = |0 - (tau - t)|: subtracting in float64 first keeps large clocks exact.
        k_hist, v_hist, hist_time, hist_valid = frames.flattened(frames.frame_time - times[:, None])
        metadata = kernels.FGTBMetadata(
            hist_time=hist_time,
            hist_valid=hist_valid,
            t=torch.zeros(self.batch_size, dtype=torch.float32, device=self.device),
            slopes=self._head_slopes(),
            bias_scale=self.config.bias_scale(query.shape[2]),
        )
        # Every stored frame and the query were checked at push / entry; rescanning the whole
        # history each step would cost a full pass (and a host sync on CUDA).
        return kernels.fgtb_forward(
            query, k_hist, v_hist, metadata, self.config.backend, check_finite=False
        )

    def _residual(self, x_t: Tensor, x_ctx: Tensor) -> Tensor:
        """``x_t + x_ctx``, rescaled per (b, h, s) to ``||x_t||`` when configured; fp32 inside."""
        current = x_t.float()
        loaded = current + x_ctx.float()
        if self.config.rescale:
            target_norm = torch.linalg.vector_norm(current, dim=-1, keepdim=True)
            loaded_norm = torch.linalg.vector_norm(loaded, dim=-1, keepdim=True)
            loaded = loaded * (target_norm / loaded_norm.clamp_min(self.config.eps))
        return loaded.to(x_t.dtype)
