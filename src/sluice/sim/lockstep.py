"""Data-parallel ranks of an MoE model, stepped in lock step (vLLM DP + EP).

vLLM runs the DP ranks of an MoE model as separate engines that take every step together: each
MoE layer exchanges tokens across the ranks (all-gather dispatch, reduce-scatter combine), so a
rank cannot start layer ``i+1`` before every rank finished layer ``i``, and a rank with nothing
to run executes a dummy batch while any other rank is busy. A step therefore lasts as long as
the slowest rank's step, and all ranks start the next one at the same instant.

Arrivals are sent to a rank by vLLM's front-end load balancer (:class:`DPBalancer`) and join
that rank's next step, as in :mod:`sluice.sim.loop`. Requests never move between ranks.

Each rank prices its own step, its MoE layers as if every rank carried its token count: that
is what vLLM runs when it pads the ranks to the largest one, which it does only when the step
runs a CUDA graph on every rank (``dp_padded``). A step that is not padded gathers the ranks'
actual token counts (``rank_tokens``), so each rank's MoE layers are repriced on them through
the perf model's optional ``ExpertParallelModel`` hook.

Not modelled here: fast-forward (every step is planned), interruptible prefill (vLLM has none),
the padding of a rank's token count to the next CUDA-graph size, and a separate cost for the
per-step DP synchronisation (a small all-reduce of token counts, tens of microseconds against
steps of tens of milliseconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from sluice.core.engine import Engine
from sluice.core.plan import BatchStats, StepPlan, StepResult
from sluice.core.request import Request
from sluice.executors.simulated import SimulatedExecutor
from sluice.perf.base import ExpertParallelModel
from sluice.sim.events import EventLoop, PendingEvents
from sluice.workload.base import Workload

INF = math.inf


class DPBalancer:
    """vLLM 0.19's internal DP load balancer (``DPLBAsyncMPClient.get_core_engine_for_request``
    in ``vllm/v1/engine/core_client.py``).

    Each request goes to the rank with the lowest ``4 * waiting + running``, ties to the lowest
    rank index. The counts are a snapshot the DP coordinator publishes every 100 ms while they
    change; between snapshots the front end adds one to the chosen rank's waiting count, so a
    burst alternates between ranks. Here a snapshot of the ranks' queue lengths replaces the
    front end's view at every multiple of ``interval`` of virtual time (when nothing changed,
    the view already equals the counts, so skipping the publication would change nothing).
    """

    name = "vllm"

    def __init__(self, ranks: int, interval: float = 0.1, waiting_weight: int = 4) -> None:
        self.ranks = ranks
        self.interval = interval
        self.waiting_weight = waiting_weight
        self.view = [[0, 0] for _ in range(ranks)]  # [waiting, running] as the front end sees it
        self._next_tick = 1

    def refresh(self, t: float, engines: list[Engine]) -> None:
        """Before an event at ``t``: apply the snapshot of any tick that passed since the last
        event (the engines' counts have not changed in between, so one snapshot covers all)."""
        if t < self._next_tick * self.interval:
            return
        self.view = [[len(e.scheduler.waiting), len(e.scheduler.running)] for e in engines]
        self._next_tick = math.floor(t / self.interval) + 1

    def choose(self, req: Request) -> int:
        best, rank = INF, 0
        ww = self.waiting_weight
        for i, (waiting, running) in enumerate(self.view):
            score = ww * waiting + running
            if score < best:
                best, rank = score, i
        self.view[rank][0] += 1
        return rank


class RoundRobin:
    """Request ``i`` to rank ``i mod N`` (an ablation, not what vLLM does)."""

    name = "round_robin"

    def __init__(self, ranks: int) -> None:
        self.ranks = ranks
        self._i = 0

    def refresh(self, t: float, engines: list[Engine]) -> None:
        pass

    def choose(self, req: Request) -> int:
        rank = self._i % self.ranks
        self._i += 1
        return rank


BALANCERS = {"vllm": DPBalancer, "round_robin": RoundRobin}


CUDAGRAPH_MAX_TOKENS = 512  # vLLM's cap on the largest CUDA-graph size (non-SM100 GPUs)


def cudagraph_max_tokens(max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """The largest step (in tokens) vLLM 0.19 runs as a CUDA graph by default:
    ``min(2 * max_num_seqs, 512, max_num_batched_tokens)`` (``VllmConfig._set_cudagraph_sizes``
    in ``vllm/config/vllm.py``, no speculative decoding). A larger step runs eagerly:
    ``CudagraphDispatcher.dispatch`` returns ``CUDAGraphMode.NONE`` above that size."""
    return min(2 * max_num_seqs, CUDAGRAPH_MAX_TOKENS, max_num_batched_tokens)


def dp_padded(tokens: tuple[float, ...], graph_max: int) -> bool:
    """Whether vLLM pads every DP rank of this step to the largest rank's token count.

    ``coordinate_batch_across_dp`` (``vllm/v1/worker/dp_utils.py``) all-reduces each rank's
    CUDA-graph mode and takes the minimum; it pads to the maximum only when that mode is not
    NONE, i.e. when every rank's step fits a CUDA graph (``tokens <= graph_max``; 0 = eager,
    never padded). Otherwise each rank keeps its own count (vLLM PR #34102, "Only use DP
    padding when cudagraphs are actually used"; DBO micro-batching, off by default, would
    pad too). ``tokens``: each rank's step (``rank_tokens``)."""
    return all(t <= graph_max for t in tokens)


def rank_tokens(begun: list[tuple[StepPlan, StepResult] | None]) -> tuple[float, ...]:
    """Each rank's token count in this step, as the ranks exchange them: an idle rank runs a
    one-token dummy batch (``execute_dummy_batch`` -> ``_dummy_run(1)``) in every MoE layer."""
    return tuple(1.0 if b is None else max(1.0, b[0].stats.total_tokens) for b in begun)


def _ep_perf(engine: Engine, ranks: int) -> ExpertParallelModel | None:
    """The engine's perf model when it prices one of ``ranks`` EP ranks and has the hook."""
    ex = engine.executor
    perf = getattr(ex, "perf", None)
    if (isinstance(ex, SimulatedExecutor) and isinstance(perf, ExpertParallelModel)
            and perf.ep > 1 and perf.ep == ranks):
        return perf
    return None


@dataclass(slots=True)
class Step:
    """One lock-step step: every rank starts at ``start``; the step ends at ``end``."""

    start: float
    end: float
    begun: list[tuple[StepPlan, StepResult] | None]


@dataclass(slots=True)
class LockstepStats:
    steps: int = 0  # lock-step steps (each counts once, whatever the number of ranks)
    rank_steps: list[int] = field(default_factory=list)  # steps in which the rank ran a batch
    dummy_steps: list[int] = field(default_factory=list)  # steps it idled while another ran
    wait_s: list[float] = field(default_factory=list)  # time it waited for slower ranks
    dispatched: list[int] = field(default_factory=list)  # requests sent to it
    kv_used_step_sum: int = 0  # sum over steps of KV blocks in use, all ranks
    kv_samples: list[tuple[float, int]] = field(default_factory=list)  # (t, blocks, all ranks)


class LockstepLoop(EventLoop):
    """Drive ``engines`` (one per DP rank) in lock step through ``workload``.

    ``sync_overhead`` seconds are added to every step in which any rank runs (default 0).
    ``cudagraph_max``: the largest step vLLM runs as a CUDA graph (``dp_padded``; 0 = eager),
    by default vLLM's for the first engine's ``max_num_seqs`` and ``max_num_batched_tokens``.
    """

    def __init__(self, engines: list[Engine], workload: Workload, *,
                 balancer: DPBalancer | RoundRobin | None = None,
                 on_request_end: Callable[[Request], None] | None = None,
                 sync_overhead: float = 0.0, kv_sample_every: float = 1.0,
                 cudagraph_max: int | None = None) -> None:
        if not engines:
            raise ValueError("lock step needs at least one engine")
        n = len(engines)
        self.engines = engines
        self.workload = workload
        self.balancer = balancer if balancer is not None else DPBalancer(n)
        self.on_request_end = on_request_end
        self.sync_overhead = sync_overhead
        self.now = 0.0
        self.stats = LockstepStats(rank_steps=[0] * n, dummy_steps=[0] * n, wait_s=[0.0] * n,
                                   dispatched=[0] * n)
        self.events = PendingEvents(workload)
        self._inflight: Step | None = None
        self._kv_sample_every = kv_sample_every
        self._next_kv_sample = 0.0
        if cudagraph_max is None:
            cfg = engines[0].scheduler.cfg
            cudagraph_max = cudagraph_max_tokens(cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.cudagraph_max = cudagraph_max
        perfs = [_ep_perf(e, n) for e in engines]
        self._ep_perfs = perfs if all(p is not None for p in perfs) else None

    @property
    def has_work(self) -> bool:
        return any(e.has_work for e in self.engines)

    # -- events ---------------------------------------------------------------------------
    def _arrive(self, req: Request | None) -> None:
        if req is None:  # a policy wake-up: nothing arrives, the next plan may differ
            return
        self.balancer.refresh(req.arrival, self.engines)
        rank = self.balancer.choose(req)
        self.stats.dispatched[rank] += 1
        if not self.engines[rank].add_request(req, req.arrival):
            self._ended(req)

    def _ended(self, req: Request) -> None:
        if self.on_request_end is not None:
            self.on_request_end(req)
        self.events.request_ended(req, self.now)

    # -- steps ----------------------------------------------------------------------------
    def _start_step(self, now: float) -> None:
        begun = [e.begin(now) for e in self.engines]
        if self._ep_perfs is not None:
            self._price_unpadded(begun)
        span = -1.0
        for b in begun:
            if b is not None and b[1].duration > span:
                span = b[1].duration
        if span < 0.0:
            self._inflight = None
            self._maybe_wake(now)
            return
        span += self.sync_overhead
        st = self.stats
        st.steps += 1
        for i, b in enumerate(begun):
            if b is None:
                st.dummy_steps[i] += 1
                st.wait_s[i] += span
            else:
                st.rank_steps[i] += 1
                st.wait_s[i] += span - b[1].duration
        self._inflight = Step(now, now + span, begun)

    def _price_unpadded(self, begun: list[tuple[StepPlan, StepResult] | None]) -> None:
        """A step vLLM does not pad (``dp_padded``): each rank's MoE layers serve the ranks'
        actual tokens, so reprice every busy rank on them (in place). A padded step keeps the
        ranks' own prices (their count on every rank: the largest rank sets the pace)."""
        tokens = rank_tokens(begun)
        if all(b is None for b in begun) or dp_padded(tokens, self.cudagraph_max):
            return
        for i, (engine, perf, b) in enumerate(zip(self.engines, self._ep_perfs, begun)):
            if b is not None:
                def step_time(stats: BatchStats, perf: ExpertParallelModel = perf) -> float:
                    return perf.step_time(stats, moe_ranks=tokens)
                duration = engine.executor.duration(b[0], step_time)  # swap copies as usual
                begun[i] = (b[0], replace(b[1], duration=duration))

    def _maybe_wake(self, now: float) -> None:
        """All ranks idle with work queued: a policy may ask to be asked again later."""
        t_wake = INF
        for e in self.engines:
            if e.has_work:
                t = e.policy.next_wakeup(e.scheduler.view(now))
                if t is not None and now < t < t_wake:
                    t_wake = t
        if t_wake < INF:
            self.events.wake_at(t_wake)

    def _complete_step(self, step: Step) -> None:
        self.balancer.refresh(step.end, self.engines)  # a snapshot taken before the step ends
        self.now = step.end
        used = 0
        for engine, b in zip(self.engines, step.begun):
            if b is not None:
                for req in engine.complete(b[0], b[1], step.end):
                    self._ended(req)
            used += engine.kv.num_used
        self.stats.kv_used_step_sum += used
        if step.end >= self._next_kv_sample:
            self.stats.kv_samples.append((step.end, used))
            self._next_kv_sample = step.end + self._kv_sample_every
