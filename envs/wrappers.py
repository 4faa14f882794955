"""Gymnasium wrappers that tell a policy how much time has passed.

Both wrappers read time from a ``memory.Clock`` with one rule (``_StepClock``):

- ``clock=None`` (default): a private ``memory.SimClock`` that restarts at 0.0 on every
  ``reset()`` and advances by ``dt`` seconds after every ``step()``; time is deterministic, so
  a seeded reset replays the same stamped episode.
- ``clock`` is a ``memory.SimClock`` you pass: advanced by ``dt`` after every ``step()`` as above
  (time shared with whatever else reads that clock); with ``dt=None`` it is only read, and you
  advance it yourself.
- any other clock (e.g. ``memory.SystemClock()``, wall time): only read, never advanced;
  ``dt`` is not used.

Readings are taken at ``reset()`` and after each ``step()`` (after the advance). A clock whose
reading goes backwards raises ``ValueError``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from memory.clock import Clock, SimClock
from memory.numbers import is_real

INTO = ("observation", "info")


class _StepClock:
    """The shared clock rule of the wrappers (see the module docstring)."""

    def __init__(self, clock: Clock | None, dt: float | None) -> None:
        if dt is not None:
            if not (is_real(dt) or isinstance(dt, np.floating | np.integer)):
                raise ValueError(f"dt must be a number of seconds > 0 or None, got {dt!r}")
            if not math.isfinite(dt) or dt <= 0:
                raise ValueError(f"dt must be a finite number of seconds > 0, got {dt}")
            dt = float(dt)
        self.owned = clock is None
        if clock is None:
            if dt is None:
                raise ValueError("dt must be > 0 when clock is None (nothing else moves time)")
            clock = SimClock()
        elif not callable(getattr(clock, "now", None)):
            raise TypeError(f"clock must have a now() -> float method, got {type(clock).__name__}")
        self.clock = clock
        self.dt = dt if isinstance(clock, SimClock) else None
        self._last = -math.inf

    def restart(self) -> float:
        """The reading at ``reset()``; a private clock starts again from 0.0."""
        if self.owned:
            self.clock, self._last = SimClock(), -math.inf
        return self.read(advance=False)

    def read(self, *, advance: bool) -> float:
        """``clock.now()``, after advancing a SimClock by ``dt`` when ``advance`` is set."""
        if advance and self.dt is not None:
            assert isinstance(self.clock, SimClock)
            self.clock.advance(self.dt)
        now = float(self.clock.now())
        if not math.isfinite(now):
            raise ValueError(f"clock.now() must be finite, got {now}")
        if now < self._last:
            raise ValueError(
                f"time went backwards: clock.now() = {now} after {self._last}; "
                "the wrapper's clock must never go back"
            )
        self._last = now
        return now


def observations_equal(a: Any, b: Any) -> bool:
    """Structural equality: arrays by value and shape, mappings and sequences recursively."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(observations_equal(a[k], b[k]) for k in a)
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if isinstance(a, Sequence) and isinstance(b, Sequence):
        return len(a) == len(b) and all(observations_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _ClockedWrapper(gym.Wrapper[Any, Any, Any, Any], gym.utils.RecordConstructorArgs):
    """Reads the clock at ``reset()`` and after every ``step()`` and hands each observation to
    ``_observe(obs, info, now, reset)``; subclasses decide what to add."""

    def __init__(self, env: gym.Env[Any, Any], clock: Clock | None, dt: float | None, **args: Any):
        # Not deep-copied: a clock is shared (and a SystemClock holds a lock).
        gym.utils.RecordConstructorArgs.__init__(
            self, _disable_deepcopy=True, clock=clock, dt=dt, **args
        )
        gym.Wrapper.__init__(self, env)
        self._time = _StepClock(clock, dt)

    @property
    def clock(self) -> Clock:
        return self._time.clock

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs, info, self._time.restart(), reset=True)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        out, info = self._observe(obs, info, self._time.read(advance=True), reset=False)
        return out, reward, terminated, truncated, info

    def _observe(
        self, obs: Any, info: dict[str, Any], now: float, reset: bool
    ) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError


class ElapsedTimeWrapper(_ClockedWrapper):
    """Adds ``[since_reset_s, since_change_s]``: time since reset, and since the observation last
    changed (compared with ``observations_equal``).

    ``into="observation"``: the observation becomes ``{"observation": obs, "elapsed":
    float32[2]}`` (space ``Dict(observation=<original>, elapsed=Box(0, inf, (2,)))``).
    ``into="info"``: the observation is unchanged; ``info["elapsed_s"]`` and
    ``info["since_change_s"]`` are floats. Clock handling: see the module docstring.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        clock: Clock | None = None,
        dt: float | None = 0.05,
        into: str = "observation",
    ) -> None:
        if into not in INTO:
            raise ValueError(f"into must be one of {INTO}, got {into!r}")
        super().__init__(env, clock, dt, into=into)
        self.into = into
        if into == "observation":
            self.observation_space = spaces.Dict(
                {
                    "observation": env.observation_space,
                    "elapsed": spaces.Box(0.0, np.inf, shape=(2,), dtype=np.float32),
                }
            )
        self._t_reset = self._t_change = 0.0
        self._last_obs: Any = None

    def _observe(
        self, obs: Any, info: dict[str, Any], now: float, reset: bool
    ) -> tuple[Any, dict[str, Any]]:
        if reset:
            self._t_reset = self._t_change = now
            self._last_obs = copy.deepcopy(obs)
        elif not observations_equal(obs, self._last_obs):
            self._t_change = now
            self._last_obs = copy.deepcopy(obs)
        since_reset, since_change = now - self._t_reset, now - self._t_change
        if self.into == "info":
            return obs, {**info, "elapsed_s": since_reset, "since_change_s": since_change}
        elapsed = np.array([since_reset, since_change], dtype=np.float32)
        return {"observation": obs, "elapsed": elapsed}, info


class TimestampWrapper(_ClockedWrapper):
    """Stamps every observation with the clock's time ``t`` (seconds).

    The observation becomes ``{"observation": obs, "t": float64[1]}`` (space
    ``Dict(observation=<original>, t=Box(-inf, inf, (1,), float64))``) and ``info["t"]`` is the
    same time as a float, on reset and on every step. Clock handling: see the module docstring.
    """

    def __init__(
        self, env: gym.Env[Any, Any], clock: Clock | None = None, dt: float | None = 0.05
    ) -> None:
        super().__init__(env, clock, dt)
        self.observation_space = spaces.Dict(
            {
                "observation": env.observation_space,
                "t": spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float64),
            }
        )

    def _observe(
        self, obs: Any, info: dict[str, Any], now: float, reset: bool
    ) -> tuple[Any, dict[str, Any]]:
        stamped = {"observation": obs, "t": np.array([now], dtype=np.float64)}
        return stamped, {**info, "t": now}
