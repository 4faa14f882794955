"""An episodic event (a span of tokens with its K/V) and the choice of its representative keys.

Shapes: H = KV heads, L = tokens of the event, D = head dim, R = representatives (<= n_repr).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memory.episodic.checks import check_int


@dataclass(frozen=True, eq=False)
class Event:
    """Tokens ``[start, end)`` of the stream, their tensors and representative keys.

    ``event_id``: consecutive ints in stream order (``id - 1`` and ``id + 1`` are the temporal
    neighbours). ``tensors``: a flat dict, e.g. ``{"layer.3.k": (H, L, D), "layer.3.v": ...}``
    (pre-RoPE keys). ``representatives``: a flat dict, e.g. ``{"layer.3": (H, R, D)}``, one
    entry per retrieval site (layer). Names are the caller's; nothing here interprets them.
    """

    event_id: int
    start: int
    end: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    representatives: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("event_id", "start", "end"):
            check_int(f"Event.{name}", getattr(self, name), 0)
        if self.end <= self.start:
            raise ValueError(f"Event span [{self.start}, {self.end}) is empty; need end > start")
        for kind in ("tensors", "representatives"):
            mapping = getattr(self, kind)
            if not isinstance(mapping, Mapping):
                raise ValueError(f"Event.{kind} must be a dict of name -> Tensor")
            for name, tensor in mapping.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"Event.{kind} names must be non-empty strings, got {name!r}")
                if not isinstance(tensor, Tensor):
                    raise ValueError(f"Event.{kind}[{name!r}] must be a Tensor")
            object.__setattr__(self, kind, dict(mapping))

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors and representatives."""
        every = [*self.tensors.values(), *self.representatives.values()]
        return sum(t.numel() * t.element_size() for t in every)

    def to(self, device: torch.device | str) -> Event:
        """This event with every tensor on ``device`` (itself if nothing moves)."""
        device = torch.device(device)
        every = [*self.tensors.values(), *self.representatives.values()]
        if all(t.device == device for t in every):
            return self
        return Event(
            self.event_id,
            self.start,
            self.end,
            {k: v.to(device) for k, v in self.tensors.items()},
            {k: v.to(device) for k, v in self.representatives.items()},
        )


def representative_indices(
    keys: Tensor, attention_mass: Tensor | None = None, n_repr: int = 4
) -> Tensor:
    """Indices (H, R) of each head's representative tokens, ascending, R = min(n_repr, L).

    With ``attention_mass`` ((H, L), or (L,) shared by all heads: the attention each token
    received, e.g. summed over the queries of the chunk and the query heads of each KV head),
    the R tokens with the most mass. Without it, the R keys closest (Euclidean) to the head's
    mean key: the most typical content of the event. Ties go to the earlier token.
    """
    if keys.dim() != 3:
        raise ValueError(f"keys must be (H, L, D), got shape {tuple(keys.shape)}")
    check_int("n_repr", n_repr, 1)
    heads, length, _ = keys.shape
    if length == 0:
        raise ValueError("keys has no tokens (L = 0)")
    if attention_mass is None:
        centred = keys.float() - keys.float().mean(dim=1, keepdim=True)
        score = -(centred * centred).sum(-1)
    else:
        if attention_mass.dim() == 1:
            attention_mass = attention_mass.unsqueeze(0).expand(heads, -1)
        if attention_mass.shape != (heads, length):
            raise ValueError(
                f"attention_mass must be (H, L) = {(heads, length)} or (L,), got "
                f"{tuple(attention_mass.shape)}"
            )
        score = attention_mass.float()
        if not bool(torch.isfinite(score).all()):
            raise ValueError("attention_mass must be finite")
    count = min(n_repr, length)
    order = torch.sort(score.to(keys.device), dim=1, descending=True, stable=True).indices
    return order[:, :count].sort(dim=1).values


def select_representatives(
    keys: Tensor, attention_mass: Tensor | None = None, n_repr: int = 4
) -> Tensor:
    """Representative keys (H, R, D) of one event's keys (H, L, D); see representative_indices."""
    indices = representative_indices(keys, attention_mass, n_repr)
    return keys.gather(1, indices.unsqueeze(-1).expand(-1, -1, keys.shape[-1]))
