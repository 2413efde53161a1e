"""The mechanism: token budget, chunking, KV allocation, preemption, retention.

One ``schedule(now)`` builds a :class:`StepPlan` the way vLLM v1 does — running requests first
(each gets ``remaining`` tokens, capped by the budget), then waiting ones in policy order — and
``update`` applies a :class:`StepResult`. Every *choice* (order, admission, victims, retention,
interruption) is delegated to the policy; nothing here knows any paper.
"""

from __future__ import annotations

from array import array
from bisect import insort

import numpy as np

from sluice.core.config import SchedulerConfig
from sluice.core.kv import KVCache
from sluice.core.plan import StepPlan, StepResult
from sluice.core.programs import ProgramTable
from sluice.core.request import Request, RequestState
from sluice.policies.base import Policy, View

_RUN = RequestState.RUNNING
ITL_COMPACT_AT = 1 << 20  # individual ITLs kept before compacting them (8 MiB)
_QUEUED = (RequestState.WAITING, RequestState.PREEMPTED, RequestState.SWAPPED)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, policy: Policy, kv: KVCache,
                 num_layers: int = 1) -> None:
        self.cfg = cfg.validate()
        self.policy = policy
        self.kv = kv
        self.num_layers = num_layers
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.programs = ProgramTable()
        # every inter-token latency in seconds (the simulator's metrics read it); a long-lived
        # server swaps in a bounded deque so memory stays flat
        self.itls = array("d")
        # ITLs in bulk, two kinds: (step end times, batch size) of a fast-forwarded run (its
        # gaps, each seen by every request of the batch: the differences are taken at the
        # end, in one go), or (gaps, counts) of ``itls`` compacted to distinct values
        self.itl_runs: list[tuple[np.ndarray, int | np.ndarray]] = []
        self.num_preemptions = 0
        self._admit_seq = 0
        self._requeue: list[Request] | None = None
        self._refund = 0
        self.max_kv_tokens = kv.num_blocks * kv.block_size

    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """Which hooks the policy overrides, noted once: the hot paths skip the others (and
        the View they would be handed)."""
        self._policy = policy
        cls = type(policy)

        def overrides(hook: str) -> bool:
            return getattr(cls, hook) is not getattr(Policy, hook) or self._listens(hook)

        self._policy_on_step = overrides("on_step")
        self._on_decode_run = overrides("on_decode_run")
        self._finish_hooks = overrides("retain") or overrides("on_finish")
        self._layered = overrides("prefill_layers")
        self._preempts = overrides("preempt_for")
        self._on_admit = overrides("on_admit")
        self._on_arrival = overrides("on_arrival")  # see _listens for instance hooks
        self._admits = overrides("admit")
        self._ranks_pins = overrides("reclaim_key")

    def _listens(self, hook: str) -> bool:
        """A hook set on the policy instance itself (tests and tools patch them in)."""
        return hook in getattr(self._policy, "__dict__", ())

    # -- intake ---------------------------------------------------------------------------
    def add(self, req: Request, now: float) -> bool:
        """Queue ``req``; reject it (and say why) if it can never run on this replica."""
        reason = self._reject_reason(req)
        self.programs.on_arrival(req)
        if reason:
            req.state = RequestState.REJECTED
            req.stop_reason = reason
            req.finish_time = now
            self._program_end(req, now)
            return False
        req.state = RequestState.WAITING
        if self._on_arrival or self._listens("on_arrival"):
            self.policy.on_arrival(req, self.view(now))
        self._enqueue(req, now)
        return True

    def _reject_reason(self, req: Request) -> str:
        cfg = self.cfg
        if req.prompt_len + req.max_tokens > cfg.max_model_len:
            return "context"
        need = req.prompt_len + (req.max_tokens if cfg.kv_reservation == "max" else 1)
        if self.kv.blocks_for(need) > self.kv.num_blocks:
            return "kv_capacity"
        if not cfg.enable_chunked_prefill and req.prompt_len > cfg.max_num_batched_tokens:
            return "token_budget"
        return ""

    def _enqueue(self, req: Request, now: float) -> None:
        if self.policy.static_key:
            key = self.policy.key
            insort(self.waiting, req, key=lambda r: key(r, now))
        else:
            self.waiting.append(req)

    def abort(self, req: Request, now: float) -> None:
        """Stop ``req`` wherever it is and free everything it holds."""
        if req.is_finished:
            return
        if req.state == _RUN:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        if req.state == RequestState.SWAPPED:
            self.kv.drop_host(req)
        self.kv.free(req)
        req.state = RequestState.ABORTED
        req.stop_reason = req.stop_reason or "abort"
        req.finish_time = now
        self._program_end(req, now)

    def _program_end(self, req: Request, now: float) -> None:
        """A turn ended: update its program; a finished program's pins are released."""
        st = self.programs.on_end(req, now)
        if st is not None and st.done and self.kv.pins:
            self.kv.release_pins_of(req.program)

    def all_itls(self) -> np.ndarray:
        """Every inter-token latency, expanded (tests, small runs); the summary reads them
        weighted instead (``metrics.sample.itl_sample``)."""
        parts = [np.asarray(self.itls, dtype=np.float64)]
        parts += [np.repeat(values, seen) if isinstance(seen, np.ndarray)
                  else np.repeat(np.diff(values), seen) for values, seen in self.itl_runs]
        return np.concatenate(parts)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def view(self, now: float) -> View:
        kv = self.kv
        return View(now, kv.num_free, kv.num_blocks, kv.block_size, self.running, self.waiting,
                    kv.num_host_blocks - kv.host_used, self.programs, self.num_layers)

    # -- scheduling -----------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        self.kv.expire_pins(now)
        plan = StepPlan(num_layers=self.num_layers)
        self._refund = 0
        budget = self._schedule_running(plan, now, self.cfg.max_num_batched_tokens)
        if not self._preempted_now:
            self._schedule_waiting(plan, now, budget)
        if self.policy.interruptible_prefill and plan.stats.prefill_seqs:
            plan.interruptible = True
        return plan

    def _running_order(self, now: float) -> list[Request]:
        running = self.running
        if self.policy.order_running:
            key = self.policy.key
            running.sort(key=lambda r: key(r, now))
        if self.cfg.decode_first:
            return sorted(running, key=lambda r: r.num_tokens - r.num_computed > 1)
        return list(running)

    def _schedule_running(self, plan: StepPlan, now: float, budget: int) -> int:
        self._preempted_now = False
        cfg = self.cfg
        cap = cfg.long_prefill_token_threshold
        chunked = cfg.enable_chunked_prefill
        bs = self.kv.block_size
        order = self._running_order(now)
        decodes = plan.decodes
        stats = plan.stats
        for req in order:
            if budget <= 0:
                break
            if req.state != _RUN:  # preempted earlier in this loop
                continue
            computed = req.num_computed
            remaining = req.num_tokens - computed
            if remaining == 1 and computed >= req.prompt_len:
                # decode: the hot path (plan.add_decode inlined), rarely a new block
                if computed >= len(req.blocks) * bs and not self._grow(
                        plan, req, computed + 1, now):
                    continue
                decodes.append(req)
                stats.decode_seqs += 1
                stats.decode_ctx += computed + 1
                budget -= 1
                continue
            n = _chunk(req, remaining, budget, cap)
            if n < remaining and not chunked:
                continue
            if not self._grow(plan, req, computed + n, now):
                continue
            self._add_prefill(plan, req, n, now)
            budget -= n
        return budget

    def _grow(self, plan: StepPlan, req: Request, total: int, now: float) -> bool:
        """Allocate KV for a running request, preempting victims while short (victims are
        running requests not planned yet this step)."""
        kv = self.kv
        while not kv.allocate(req, total):
            need = kv.needed_blocks(req, total)
            if kv.pins and kv.reclaim_pins(need, key=self._reclaim_key(now)):
                continue
            scheduled = {id(r) for r in plan.decodes}
            scheduled.update(id(c.req) for c in plan.chunks)
            candidates = [r for r in self.running if r.state == _RUN and id(r) not in scheduled]
            victim = self.policy.victim(candidates, self.view(now)) if candidates else req
            self._preempt(plan, victim, now)
            if victim is req:
                return False
        return True

    def _schedule_waiting(self, plan: StepPlan, now: float, budget: int) -> None:
        policy, cfg, kv = self.policy, self.cfg, self.kv
        if not self.waiting:
            return
        if not policy.static_key:
            key = policy.key
            self.waiting.sort(key=lambda r: key(r, now))
        admits = self._admits or self._listens("admit")
        view = self.view(now) if admits else None  # only admission policies read it
        taken: list[int] = []
        self._requeue = []  # victims evicted during this loop join the queue after it
        for i, req in enumerate(self.waiting):
            if budget <= 0:
                break
            if len(self.running) >= cfg.max_num_seqs and not self._free_a_seat(plan, req, now):
                break
            budget += self._refund
            self._refund = 0
            admitted = view is None or policy.admit(req, view)
            n = self._admit(plan, req, now, budget) if admitted else 0
            budget += self._refund  # work of victims taken out of the plan
            self._refund = 0
            if not n:
                if policy.skip_blocked:
                    continue
                break
            taken.append(i)
            budget -= n
        self._remove_waiting(taken)
        requeue, self._requeue = self._requeue, None
        for victim in requeue:
            self._enqueue(victim, now)

    def _free_a_seat(self, plan: StepPlan, req: Request, now: float) -> bool:
        """The batch is full (max_num_seqs): a policy's ``preempt_for`` may still evict."""
        if not self._preempts:
            return False
        for v in self._evictable(plan, self.policy.preempt_for(req, self.view(now))):
            self._preempt(plan, v, now)
        return len(self.running) < self.cfg.max_num_seqs

    @staticmethod
    def _evictable(plan: StepPlan, victims: list[Request]) -> list[Request]:
        """Running victims; a victim already planned this step has its work taken out of the
        plan when it is preempted (``StepPlan.unplan``), so no compute is wasted on it."""
        return [v for v in victims if v.state == _RUN]

    def _remove_waiting(self, taken: list[int]) -> None:
        if not taken:
            return
        if taken[-1] == len(taken) - 1:  # a prefix: one memmove
            del self.waiting[: len(taken)]
        else:
            for i in reversed(taken):
                del self.waiting[i]

    def _admit(self, plan: StepPlan, req: Request, now: float, budget: int) -> int:
        """Try to start (or resume) ``req`` this step; returns the tokens scheduled (0: no)."""
        kv = self.kv
        if req.state == RequestState.SWAPPED:
            n = _chunk(req, req.num_tokens - req.num_computed, budget,
                       self.cfg.long_prefill_token_threshold)
            need = max(req.host_blocks, kv.blocks_for(req.num_computed + n))
            if not kv.can_allocate(need) and not self._make_room(plan, req, need, now):
                return 0
            blocks = kv.swap_in(req)
            if blocks is None or not kv.allocate(req, req.num_computed + n):
                raise AssertionError("swap-in failed after room was checked")
            plan.swap_in.append((req, blocks))
            plan.stats.swap_in_blocks += len(blocks)
        else:
            hits = kv.lookup(req) if not req.blocks else []
            start = len(hits) * kv.block_size
            n = _chunk(req, req.num_tokens - start, budget, self.cfg.long_prefill_token_threshold)
            if n < req.num_tokens - start and not self.cfg.enable_chunked_prefill:
                return 0
            target = self._reservation(req, start + n)
            need = kv.blocks_for(target) - len(hits)
            def enough() -> bool:  # hits sitting in the LRU count as free until we take them
                return kv.can_allocate(need + kv.unreferenced(hits), admission=True)

            if not enough() and not self._make_room(plan, req, need, now, enough):
                return 0
            kv.acquire_hits(req, hits)
            if not kv.allocate(req, target, admission=True):
                kv.free(req)
                req.num_computed = 0
                return 0
            if req.first_scheduled < 0:
                req.first_scheduled = now
                req.cached_tokens = start
        req.state = _RUN
        if self._on_admit:
            self.policy.on_admit(req, self.view(now))
        req.admitted_seq = self._admit_seq
        self._admit_seq += 1
        self.running.append(req)
        # n (from either branch) is this chunk: num_computed is now where it starts
        if req.num_tokens - req.num_computed > 1 or req.num_computed < req.prompt_len:
            self._add_prefill(plan, req, n, now)
        else:
            plan.add_decode(req)
        return n

    def _add_prefill(self, plan: StepPlan, req: Request, n: int, now: float) -> None:
        until = 0
        if self._layered:
            until = self.policy.prefill_layers(req, self.view(now)) or 0
            if until:
                skip = req.resume_layers if req.resume_tokens == n else 0
                until = skip + until  # the policy gives a count of layers to run now
        plan.add(req, n, True, until)

    def _reservation(self, req: Request, upto: int) -> int:
        mode = self.cfg.kv_reservation
        if mode == "prompt":
            return max(upto, req.num_tokens)
        if mode == "max":
            return max(upto, min(req.prompt_len + req.max_tokens, self.cfg.max_model_len))
        return upto

    def _make_room(self, plan: StepPlan, req: Request, need: int, now: float,
                   enough=None) -> bool:
        """Pins first (in the policy's reclaim order; see ``_pins_yield``), then the
        policy's ``preempt_for`` victims. True if room was made."""
        kv = self.kv
        if enough is None:
            def enough() -> bool:
                return kv.can_allocate(need, admission=True)
        if kv.pins and self._pins_yield(req):
            kv.reclaim_pins(need, key=self._reclaim_key(now), enough=enough)
            if enough():
                return True
        if not self._preempts:
            return False
        victims = self._evictable(plan, self.policy.preempt_for(req, self.view(now)))
        for v in victims:
            self._preempt(plan, v, now)
        return bool(victims) and enough()

    def _pins_yield(self, req: Request) -> bool:
        """Whether ``req`` may reclaim pins to be admitted. A policy may keep pins from new
        work (``pins_yield_to_waiting``: held context as admission control), but never from
        work that already ran (a preempted or swapped-out request resuming) and never while
        nothing runs: the GPU would idle until an expiry with work queued."""
        return (self.policy.pins_yield_to_waiting or not self.running
                or req.state != RequestState.WAITING)

    def _reclaim_key(self, now: float):
        if not self._ranks_pins:
            return None
        view = self.view(now)
        rank = self.policy.reclaim_key
        return lambda pin: rank(pin, view)

    def _preempt(self, plan: StepPlan, req: Request, now: float) -> None:
        """Evict a running request by swap (if configured and the host has room) or recompute."""
        self._preempted_now = True
        self._refund += plan.unplan(req)
        self.num_preemptions += 1
        req.preemptions += 1
        req.resume_layers = req.resume_tokens = 0
        self.running.remove(req)
        kv = self.kv
        if self.cfg.preemption_mode == "swap" and kv.can_swap_out(req):
            blocks = kv.swap_out(req)
            plan.swap_out.append((req, blocks))
            plan.stats.swap_out_blocks += len(blocks)
            req.state = RequestState.SWAPPED
        else:
            req.recomputed_tokens += req.num_computed
            kv.free(req, may_return=True)
            req.num_computed = 0
            req.state = RequestState.PREEMPTED
        if self._requeue is not None:  # inside the waiting loop: do not shift its indices
            self._requeue.append(req)
        else:
            self._enqueue(req, now)

    # -- results --------------------------------------------------------------------------
    def update(self, plan: StepPlan, result: StepResult, now: float) -> list[Request]:
        """Apply a finished (or interrupted) step at time ``now``; returns requests that ended."""
        if result.layers_done is not None:
            for ch in plan.chunks:
                if ch.req.state == _RUN:
                    ch.req.resume_layers = result.layers_done
                    ch.req.resume_tokens = ch.n_tokens
            return []
        ended: list[Request] = []
        sampled = result.sampled
        finished_ids = result.finished
        kv = self.kv
        itls = self.itls
        max_len = self.cfg.max_model_len
        bs = kv.block_size
        for ch in plan.chunks:
            req = ch.req
            if req.state != _RUN:
                continue
            if ch.until_layer:  # a layer group of the chunk ran; the rest comes later
                req.resume_layers = ch.until_layer
                req.resume_tokens = ch.n_tokens
                continue
            computed = req.num_computed + ch.n_tokens
            req.num_computed = computed
            req.resume_layers = req.resume_tokens = 0
            if computed == req.num_tokens and self._sample(req, sampled, finished_ids, now):
                ended.append(req)
            if computed // bs != ch.start // bs:  # a block became full
                kv.commit(req)
        for req in plan.decodes:  # _sample inlined: this loop is the simulator's hot path
            if req.state != _RUN:
                continue
            computed = req.num_computed + 1
            req.num_computed = computed
            content = req.content
            segs = content.segments
            if sampled is not None:
                content.append_tokens(sampled[req.id])
            elif segs is not None and segs[-1][0] == -1 - req.id:  # req.output_key, inlined
                segs[-1][1] += 1
                content.length += 1
            else:
                content.append_virtual(req.output_key, 1)
            req.num_tokens = computed + 1
            out = req.num_output + 1
            req.num_output = out
            itls.append(now - req.last_token)
            req.last_token = now
            if out >= req.max_tokens or computed + 1 >= max_len or req.id in finished_ids:
                ended.append(req)
            # a block became full: register it now for token content; a virtual output
            # segment is unique to its request, so kv.free registers those blocks at its end
            if segs is None and computed % bs == 0:
                kv.commit(req)
        for req in ended:
            self._finish(req, now, "stop" if req.id in finished_ids else "length")
        if len(itls) > ITL_COMPACT_AT and isinstance(itls, array):
            self._compact_itls()
        if self._policy_on_step:
            served = [(c.req, c.n_tokens) for c in plan.chunks] + [(r, 1) for r in plan.decodes]
            self.policy.on_step(served, self.view(now))
        return ended

    def _compact_itls(self) -> None:
        """The decoders of one step share its gap: keep distinct gaps with counts, so a long
        overloaded run (no fast-forward) does not hold 8 bytes per generated token."""
        values, counts = np.unique(np.frombuffer(self.itls, dtype=np.float64),
                                   return_counts=True)
        self.itl_runs.append((values, counts))
        self.itls = array("d")

    def _sample(self, req: Request, sampled, finished_ids: set[int], now: float) -> bool:
        """A chunk completed ``req``'s tokens: take the sampled token; True if it ended."""
        if sampled is None:
            req.content.append_virtual(req.output_key, 1)
        else:
            req.content.append_tokens(sampled[req.id])
        req.num_tokens += 1
        req.num_output += 1
        if req.first_token < 0:
            req.first_token = now
        else:
            self.itls.append(now - req.last_token)
        req.last_token = now
        return (req.num_output >= req.max_tokens or req.id in finished_ids
                or req.num_tokens >= self.cfg.max_model_len)

    def _finish(self, req: Request, now: float, reason: str) -> None:
        req.state = RequestState.FINISHED
        req.stop_reason = reason
        req.finish_time = now
        self.running.remove(req)
        view = self.view(now) if self._finish_hooks else None  # most policies ignore it
        if view is not None:
            self._retain(req, view, now)
        self.kv.free(req)
        self._program_end(req, now)
        if view is not None:
            self.policy.on_finish(req, view)

    def _retain(self, req: Request, view: View, now: float) -> None:
        """The policy may pin the finished request's full blocks (agent turns)."""
        ttl = self.policy.retain(req, view)
        if ttl is not None and ttl > 0:
            n_full = min(req.num_computed // self.kv.block_size, len(req.blocks))
            if n_full:
                if req.program is not None:  # the new pin covers the program's older ones
                    self.kv.release_pins_of(req.program)
                self.kv.pin(req.blocks[:n_full], now + ttl, owner=req.program, tag="retain")


def _chunk(req: Request, remaining: int, budget: int, cap: int) -> int:
    """Tokens to compute for ``req`` this step: a resumed interrupted chunk keeps its size."""
    if req.resume_tokens and req.resume_tokens <= min(remaining, budget):
        return req.resume_tokens
    n = remaining if remaining < budget else budget
    if cap and n > cap:
        n = cap
    return n
