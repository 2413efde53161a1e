"""Request, SLO and the request state machine (DESIGN §3).

A request carries what a scheduler may know (prompt, ``max_tokens``, tenant, priority, SLO,
program/turn, an optional *predicted* output length) and the timeline the metrics need. The true
output length of a simulated request is *not* here: it lives in the simulated executor's oracle
(DESIGN principle 3).

Token accounting follows vLLM v1: ``num_tokens`` is every token id the request has (prompt +
generated), ``num_computed`` those whose KV is in the cache. Each step schedules
``num_tokens - num_computed`` (capped); when a step makes ``num_computed == num_tokens`` the
request samples one token. Prefill, chunked prefill, decode and recompute after preemption are
all this one rule.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from sluice.core.content import Content


class RequestState(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2  # recompute: KV dropped, back in the waiting queue
    SWAPPED = 3  # KV on the host tier, back in the waiting queue
    FINISHED = 4
    ABORTED = 5
    REJECTED = 6  # never admitted: longer than the context, or shed by admission control


FINAL_STATES = (RequestState.FINISHED, RequestState.ABORTED, RequestState.REJECTED)


@dataclass(slots=True, frozen=True)
class SLO:
    """Latency objectives in seconds; ``None`` means no objective on that metric."""

    ttft: float | None = None
    tpot: float | None = None
    deadline: float | None = None  # end-to-end latency bound

    def __post_init__(self) -> None:
        for name in ("ttft", "tpot", "deadline"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise ValueError(f"SLO {name} must be a positive number of seconds, got {v!r}")


@dataclass(slots=True, eq=False)
class Request:
    """One LLM call. Fields above ``state`` are inputs; the rest is mechanism state/timeline.

    Compared by identity (``eq=False``): two requests are never "equal" by value."""

    id: int
    arrival: float
    content: Content
    max_tokens: int
    user: str = "default"
    weight: float = 1.0
    priority: int = 0  # lower value runs first (vLLM convention)
    slo: SLO | None = None
    slo_class: str = ""
    program: int | None = None
    turn: int = 0
    last_turn: bool = True
    tool: str | None = None  # tool expected after this call (agent programs)
    predicted_output: int | None = None
    sampling: Any = None  # engine-only sampling parameters; opaque to the scheduler
    # Simulation oracle only: the output length at which EOS happens. The scheduler and the
    # policies must never read it (DESIGN principle 3; tests/test_no_future.py enforces it).
    true_output: int | None = None
    prompt_len: int = 0

    state: RequestState = RequestState.WAITING
    num_tokens: int = 0
    num_computed: int = 0
    num_output: int = 0
    blocks: list[int] = field(default_factory=list)
    host_blocks: int = 0  # blocks of KV held on the host tier while SWAPPED
    admitted_seq: int = -1  # admission order, for "most recently admitted" victims
    resume_layers: int = 0  # layers of the next chunk already done (interrupted prefill)
    resume_tokens: int = 0
    stop_reason: str = ""
    own_blocks: list[int] | None = None  # private content: its blocks when last preempted

    # timeline
    first_scheduled: float = -1.0
    first_token: float = -1.0
    last_token: float = -1.0
    finish_time: float = -1.0
    token_times: list[float] | None = None
    preemptions: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    recomputed_tokens: int = 0  # tokens whose KV was dropped and computed again
    queue_time: float = 0.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"request {self.id}: max_tokens must be >= 1, got {self.max_tokens}")
        if self.weight <= 0:
            raise ValueError(f"request {self.id}: weight must be > 0, got {self.weight}")
        self.prompt_len = self.content.length
        if self.prompt_len < 1:
            raise ValueError(f"request {self.id}: empty prompt")
        self.num_tokens = self.prompt_len

    # -- derived --------------------------------------------------------------------------
    @property
    def is_finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def remaining(self) -> int:
        """Tokens to compute before the next token can be sampled."""
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_tokens - self.num_computed > 1 or self.num_computed < self.prompt_len

    @property
    def output_key(self) -> int:
        """Segment key of this request's virtual output tokens (simulation)."""
        return -(self.id + 1)

    def ttft(self) -> float:
        return self.first_token - self.arrival if self.first_token >= 0 else math.nan

    def e2e(self) -> float:
        return self.finish_time - self.arrival if self.finish_time >= 0 else math.nan
