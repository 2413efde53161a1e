"""Sampling parameters and next-token selection.

Randomness is *stateless per token*: the uniform number that picks token ``p`` of a request
comes from a generator seeded with ``(seed, p)``. So a seeded request yields the same output
whether or not it was preempted, recomputed or batched differently, and the executor keeps no
per-request RNG state that could leak when a request is aborted. Requests without a seed get
one derived from the executor's seed and the request id (deterministic runs, DESIGN principle 5).

Logprobs are of the model's distribution (raw logits, before temperature/top-k/top-p), as
vLLM and the OpenAI API report them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_MIX = 0x9E3779B97F4A7C15
_MASK64 = (1 << 63) - 1


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """Per-request decoding settings (``Request.sampling``; ``None`` means greedy)."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.stop is None:
            object.__setattr__(self, "stop", ())
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids",
                           tuple(int(t) for t in self.stop_token_ids or ()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0)


def token_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the token at ``position`` of a stream seeded with ``seed``."""
    x = (seed * _MIX + position * 0xBF58476D1CE4E5B9 + 1) & ((1 << 64) - 1)
    x ^= x >> 31
    return (x * 0x94D049BB133111EB) & _MASK64


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], seeds: list[int],
                positions: list[int]) -> list[int]:
    """One token per row of fp32 ``logits [B, V]``. ``seeds[i]`` is the effective seed of
    row ``i`` and ``positions[i]`` the position the sampled token will take."""
    out = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        picks = logits[greedy].argmax(dim=-1).tolist()
        for i, t in zip(greedy, picks):
            out[i] = t
    for i, p in enumerate(params):
        if not p.greedy:
            out[i] = _sample_one(logits[i], p, token_seed(seeds[i], positions[i]))
    return out


def _sample_one(row: torch.Tensor, p: SamplingParams, seed: int) -> int:
    scaled = row / p.temperature
    if 0 < p.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, p.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if p.top_p < 1.0:
        probs = _top_p(probs, p.top_p)
    cdf = probs.cumsum(0)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand((), generator=gen).item() * cdf[-1].item()
    idx = int(torch.searchsorted(cdf, torch.tensor([u], device=cdf.device, dtype=cdf.dtype)))
    return min(idx, probs.shape[-1] - 1)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``."""
    sorted_p, order = probs.sort(descending=True)
    before = sorted_p.cumsum(0) - sorted_p  # mass of strictly more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(0, order, sorted_p)


def chosen_logprobs(logits: torch.Tensor, rows: list[int], tokens: list[int]) -> list[float]:
    """Log-probability of ``tokens[j]`` under row ``rows[j]`` of ``logits``."""
    if not rows:
        return []
    lp = torch.log_softmax(logits[rows], dim=-1)
    return lp[torch.arange(len(rows)), torch.tensor(tokens)].tolist()
