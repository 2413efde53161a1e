"""StepPlan (scheduler -> executor) and StepResult (executor -> scheduler).

Plain dataclasses, no torch (DESIGN principle 4), so the simulated and the torch executor take
the same plan. The plan also carries the batch aggregates a performance model needs
(:class:`BatchStats`), accumulated while the scheduler builds it, so pricing a step never walks
the batch a second time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sluice.core.request import Request


@dataclass(slots=True)
class Chunk:
    """``n_tokens`` tokens of ``req`` starting at position ``start`` computed this step."""

    req: Request
    start: int
    n_tokens: int
    is_prefill: bool
    skip_layers: int = 0  # layers already done by an interrupted step (resumed prefill)
    until_layer: int = 0  # run layers [skip_layers, until_layer); 0 = to the last layer


@dataclass(slots=True)
class BatchStats:
    """What a step costs is a function of these numbers (see perf/).

    ``prefill_*`` are weighted by the fraction of layers still to run for resumed chunks.
    ``prefill_attn`` counts query-key pairs: for a chunk of ``n`` new tokens after ``c`` cached
    ones it is ``n * c + n * (n + 1) / 2`` (causal).
    """

    prefill_tokens: float = 0.0
    prefill_seqs: int = 0
    prefill_attn: float = 0.0
    prefill_ctx: float = 0.0  # KV tokens read by prefill chunks (context before the chunk)
    max_prefill_chunk: int = 0
    decode_seqs: int = 0
    decode_ctx: int = 0  # KV tokens read by decode sequences
    swap_in_blocks: int = 0
    swap_out_blocks: int = 0

    @property
    def total_tokens(self) -> float:
        return self.prefill_tokens + self.decode_seqs


@dataclass(slots=True)
class StepPlan:
    """``chunks`` holds prefill work; ``decodes`` the requests decoding one token each (kept
    apart because they are most of every batch and need no per-step object). Executors that
    want one uniform list use :meth:`all_chunks`."""

    chunks: list[Chunk] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)
    stats: BatchStats = field(default_factory=BatchStats)
    # (request, device block ids): swap-out copies these blocks to the host *before* the
    # forward (the ids may be reused by this same plan); swap-in copies host KV into them.
    swap_out: list[tuple[Request, list[int]]] = field(default_factory=list)
    swap_in: list[tuple[Request, list[int]]] = field(default_factory=list)
    interruptible: bool = False  # prefill may stop at a layer boundary on an arrival
    num_layers: int = 1

    def add(self, req: Request, n_tokens: int, is_prefill: bool, until_layer: int = 0) -> None:
        start = req.num_computed
        skip = req.resume_layers if (req.resume_tokens == n_tokens) else 0
        if until_layer and (until_layer <= skip or until_layer >= self.num_layers):
            until_layer = 0
        if not is_prefill:
            assert n_tokens == 1, "decode chunks are one token"
            self.add_decode(req)
            return
        self.chunks.append(Chunk(req, start, n_tokens, is_prefill, skip, until_layer))
        s = self.stats
        last = until_layer or self.num_layers
        frac = (last - skip) / self.num_layers if (skip or until_layer) else 1.0
        s.prefill_tokens += n_tokens * frac
        s.prefill_seqs += 1
        s.prefill_attn += frac * (n_tokens * start + n_tokens * (n_tokens + 1) / 2)
        s.prefill_ctx += frac * start
        if n_tokens > s.max_prefill_chunk:
            s.max_prefill_chunk = n_tokens

    def add_decode(self, req: Request) -> None:
        """One decode token for ``req`` (the hot path)."""
        self.decodes.append(req)
        s = self.stats
        s.decode_seqs += 1
        s.decode_ctx += req.num_computed + 1

    def unplan(self, req: Request) -> int:
        """Take ``req``'s work out of this plan (it was preempted after being planned, as
        vLLM's priority preemption does); returns the tokens given back to the budget."""
        s = self.stats
        for i, ch in enumerate(self.chunks):
            if ch.req is req:
                del self.chunks[i]
                last = ch.until_layer or self.num_layers
                frac = (last - ch.skip_layers) / self.num_layers
                n, start = ch.n_tokens, ch.start
                s.prefill_tokens -= n * frac
                s.prefill_seqs -= 1
                s.prefill_attn -= frac * (n * start + n * (n + 1) / 2)
                s.prefill_ctx -= frac * start
                s.max_prefill_chunk = max((c.n_tokens for c in self.chunks), default=0)
                return n
        for i, r in enumerate(self.decodes):
            if r is req:
                del self.decodes[i]
                s.decode_seqs -= 1
                s.decode_ctx -= req.num_computed + 1
                return 1
        return 0

    def all_chunks(self) -> list[Chunk]:
        """Prefill chunks then one-token decode chunks, before the step is applied."""
        return self.chunks + [Chunk(r, r.num_computed, 1, False, 0) for r in self.decodes]

    @property
    def num_seqs(self) -> int:
        return len(self.chunks) + len(self.decodes)

    @property
    def empty(self) -> bool:
        return not self.chunks and not self.decodes and not self.swap_in and not self.swap_out


def step_line(plan: StepPlan, result: "StepResult") -> dict:
    """A step log's line (``sluice perf calibrate`` reads it): the batch aggregates and the
    measured duration, plus the layers done when the step was interrupted. One format for
    every writer: the torch executor's own log and the server's."""
    row = asdict(plan.stats)
    row["duration_s"] = result.duration
    if result.layers_done is not None:
        row["layers_done"] = result.layers_done
    return row


@dataclass(slots=True)
class StepResult:
    """What happened. ``sampled`` maps request id -> new token ids (real engine only);
    ``finished`` holds ids that hit EOS or a stop condition the executor detected.
    ``layers_done`` is set when the step was interrupted at a layer boundary: then no chunk's
    tokens count and prefill chunks keep that many layers of progress."""

    duration: float
    sampled: dict[int, list[int]] | None = None
    finished: set[int] = field(default_factory=set)
    layers_done: int | None = None
    logprobs: dict[int, list[float]] | None = None
