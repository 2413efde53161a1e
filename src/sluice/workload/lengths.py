"""Token-length distributions for synthetic requests: fixed, uniform, lognormal, and empirical
(input, output) pairs drawn from any trace.

Why empirical *pairs*: input and output lengths are correlated in real traffic (code
completion: long prompt, short output), so sampling them independently from their marginals
would invent requests no one sends. Every sampler draws vectorised batches from an explicit
``numpy.random.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sluice.errors import ConfigError


class LengthDist(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` token counts >= 1 (int64)."""


@dataclass(frozen=True, slots=True)
class Fixed:
    value: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Uniform:
    low: int
    high: int  # inclusive

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high + 1, n, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Lognormal with the given *mean* and CV, clipped to [low, high]."""

    mean: float
    cv: float
    low: int = 1
    high: int = 1 << 20

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        sigma2 = math.log1p(self.cv ** 2)
        mu = math.log(self.mean) - sigma2 / 2
        x = rng.lognormal(mu, math.sqrt(sigma2), n)
        return np.clip(np.rint(x), self.low, self.high).astype(np.int64)


@dataclass(frozen=True, slots=True)
class Empirical:
    """Draws with replacement from observed values (one column of a trace)."""

    values: np.ndarray = field(repr=False)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.values[rng.integers(0, len(self.values), n)]


def parse_length(spec: str) -> LengthDist:
    """``fixed:N`` | ``uniform:LO:HI`` | ``lognormal:MEAN:CV`` | ``N`` (fixed)."""
    parts = spec.split(":")
    try:
        if len(parts) == 1:
            return _positive(Fixed(int(parts[0])), spec)
        kind, args = parts[0].lower(), [float(a) for a in parts[1:]]
        if kind == "fixed" and len(args) == 1:
            return _positive(Fixed(int(args[0])), spec)
        if kind == "uniform" and len(args) == 2:
            return _positive(Uniform(int(args[0]), int(args[1])), spec)
        if kind == "lognormal" and len(args) == 2 and args[0] > 0 and args[1] > 0:
            return LogNormal(args[0], args[1])
    except ValueError:
        pass
    raise ConfigError(f"bad length spec {spec!r}; expected N, fixed:N, uniform:LO:HI or "
                      "lognormal:MEAN:CV")


def _positive(dist: LengthDist, spec: str) -> LengthDist:
    low = dist.value if isinstance(dist, Fixed) else dist.low  # type: ignore[union-attr]
    if low < 1 or (isinstance(dist, Uniform) and dist.high < dist.low):
        raise ConfigError(f"bad length spec {spec!r}: lengths must be >= 1 and LO <= HI")
    return dist


@dataclass(slots=True)
class PairSampler:
    """(input, output) pairs: either independent distributions or rows of a trace."""

    inputs: LengthDist | None = None
    outputs: LengthDist | None = None
    pairs: np.ndarray | None = None  # shape (n, 2) of trace rows

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pairs is not None:
            rows = self.pairs[rng.integers(0, len(self.pairs), n)]
            return rows[:, 0], rows[:, 1]
        assert self.inputs is not None and self.outputs is not None
        return self.inputs.sample(rng, n), self.outputs.sample(rng, n)


def pairs_from_trace(trace_name: str, limit: int = 2_000_000) -> np.ndarray:
    """(input, output) rows of a trace as an (n, 2) int64 array (first ``limit`` rows)."""
    from sluice.workload.traces import Trace

    buf: list[tuple[int, int]] = []
    for rec in Trace(trace_name).records(check_order=False):
        buf.append((rec.input_len, rec.output_len))
        if len(buf) >= limit:
            break
    if not buf:
        raise ConfigError(f"trace {trace_name!r} has no rows to sample lengths from")
    return np.asarray(buf, dtype=np.int64)
