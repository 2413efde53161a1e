"""Scheduler configuration: the mechanism's knobs. Docstrings double as CLI help."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sluice.errors import ConfigError

KV_RESERVATIONS = ("incremental", "prompt", "max")
PREEMPTION_MODES = ("recompute", "swap")


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    """Most requests in one batch (vLLM ``--max-num-seqs``)."""
    max_num_batched_tokens: int = 8192
    """Token budget of one step (vLLM ``--max-num-batched-tokens``)."""
    enable_chunked_prefill: bool = True
    """Split long prompts over steps; without it a prompt must fit the budget whole."""
    long_prefill_token_threshold: int = 0
    """Cap on one request's prefill chunk per step (0 = only the budget caps it)."""
    decode_first: bool = False
    """Schedule running decodes before running prefills (Sarathi's stall-free batching)."""
    kv_reservation: str = "incremental"
    """KV blocks taken at admission: ``incremental`` (as needed), ``prompt`` (whole prompt,
    Sarathi), ``max`` (prompt + max_tokens, Orca)."""
    preemption_mode: str = "recompute"
    """How a victim gives up its KV: ``recompute`` (drop, prefill again) or ``swap`` (host)."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical prefixes (hash chain over block contents)."""
    max_model_len: int = 131072
    """Longest prompt + output; longer requests are rejected and counted."""
    block_size: int = 16
    """Tokens per KV block."""
    watermark: float = 0.0
    """Share of blocks kept free when admitting new requests (vLLM v0 used 0.01)."""

    def validate(self) -> "SchedulerConfig":
        positive = ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_reservation not in KV_RESERVATIONS:
            raise ConfigError(f"kv_reservation {self.kv_reservation!r}; valid: "
                              f"{', '.join(KV_RESERVATIONS)}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"preemption_mode {self.preemption_mode!r}; valid: "
                              f"{', '.join(PREEMPTION_MODES)}")
        if not 0.0 <= self.watermark < 1.0:
            raise ConfigError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.long_prefill_token_threshold < 0:
            raise ConfigError("long_prefill_token_threshold must be >= 0")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> "SchedulerConfig":
        known = {f.name for f in fields(self)}
        clean = {k: v for k, v in overrides.items() if v is not None}
        bad = sorted(set(clean) - known)
        if bad:
            raise ConfigError(f"unknown scheduler option(s) {bad}; valid: {sorted(known)}")
        return replace(self, **clean)
