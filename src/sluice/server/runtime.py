"""The engine loop on the wall clock, in a background thread, and its request intake.

Why a thread and a command queue: ``Engine.step`` is synchronous and long (a forward pass), and
the scheduler's state must be touched by one thread only. HTTP handlers therefore never call
the engine: they enqueue commands (add, abort, call) that the engine thread applies between
steps, and they read a published :class:`EngineSnapshot` for gauges and queue limits. Results
flow back through each request's :class:`RequestStream`.

The loop is the engine's own three lines - schedule, execute, update via ``Engine.step(now)``
with ``now`` read from a monotonic clock - so the scheduler behaves exactly as in simulation.
A step that raises ends the requests of that batch with ``error`` and the loop goes on; one bad
request never stops the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import queue
import threading
import time
from typing import Any, Callable

from sluice.core.engine import Engine
from sluice.core.plan import StepPlan, StepResult
from sluice.core.request import Request, RequestState
from sluice.server.metrics import EngineSnapshot, ServerMetrics
from sluice.server.servelog import RequestTimes, ServeLog
from sluice.server.stream import EndEvent, RequestStream, TokenEvent

log = logging.getLogger("sluice.server")

IDLE_WAIT_S = 0.05
BLOCKED_WAIT_S = 0.002  # work queued but nothing schedulable (admission control, pins)


class QueueFull(Exception):
    """More requests wait than ``max_queue``; ``retry_after`` is a hint in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class Draining(Exception):
    """The server is shutting down and accepts no new requests."""


class EngineRuntime:
    """Owns the engine and the thread that drives it."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, max_queue: int = 1024,
                 clock: Callable[[], float] = time.monotonic,
                 servelog: ServeLog | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_queue = max_queue
        self.servelog = servelog or ServeLog(None)  # step and request lines (--step-log)
        self._waited = 0.0  # seconds the loop waited for work since the last step started
        self._clock = clock
        self._t0 = clock()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._streams: dict[int, RequestStream] = {}
        self._ids = itertools.count()
        self._pending = 0  # submitted, not yet added to the scheduler
        self._pending_lock = threading.Lock()
        self._stop = False
        self._draining = False
        self._thread: threading.Thread | None = None
        self._ended = 0
        self._failures = 0  # consecutive failed steps
        self.snapshot = EngineSnapshot(kv_total=engine.kv.num_blocks)
        if clock is time.monotonic:  # lets a tool on this host line up its own stamps
            self.servelog.meta(server_log="sluice", clock="monotonic", clock_origin=self._t0)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sluice-engine", daemon=True)
        self._thread.start()

    def shutdown(self, drain: bool = True, timeout: float = 30.0) -> bool:
        """Stop taking requests; with ``drain`` let in-flight ones finish (up to ``timeout``),
        then abort what is left and stop the thread. True if everything drained."""
        self._draining = True
        drained = True
        if drain and self._thread is not None:
            deadline = self._clock() + timeout
            while self._busy() and self._clock() < deadline:
                self._idle.wait(0.05)
            drained = not self._busy()
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        close = getattr(self.engine.executor, "close", None)
        if callable(close):
            close()
        self.servelog.close(self.now())
        return drained

    @property
    def draining(self) -> bool:
        return self._draining

    def _busy(self) -> bool:
        return bool(self._pending or self._streams or self.engine.has_work)

    def now(self) -> float:
        """Seconds since the runtime started (the engine's clock)."""
        return self._clock() - self._t0

    def next_id(self) -> int:
        return next(self._ids)

    # -- intake (called from the event loop) ----------------------------------------------
    def submit(self, req: Request, received: float | None = None) -> RequestStream:
        """Queue ``req``; its events arrive on the returned stream. ``received``: when the app
        saw the request (engine clock), for the request log."""
        if self._draining or self._stop:
            raise Draining()
        snap = self.snapshot
        with self._pending_lock:
            queued = snap.waiting + self._pending
            if queued >= self.max_queue:
                self.metrics.count_rejected("queue_full")
                raise QueueFull(self._retry_after(queued))
            self._pending += 1
        stream = RequestStream(req, asyncio.get_running_loop())
        stream.times = RequestTimes(req.id, req.arrival if received is None else received)
        stream.times.submitted = self.now()
        self._send(("add", stream))
        interrupt = getattr(self.engine.executor, "interrupt", None)
        if interrupt is not None:
            interrupt.set()  # an arrival may cut an interruptible prefill (FlowPrefill)
        return stream

    def abort(self, stream: RequestStream) -> None:
        """The client left: stop the request and free its KV (no-op if it already ended)."""
        if not stream.finished:
            self._send(("abort", stream))

    def call(self, fn: Callable[[Engine], Any], timeout: float = 30.0) -> Any:
        """Run ``fn(engine)`` on the engine thread between steps (tests, inspection)."""
        if self._thread is None:
            return fn(self.engine)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._send(("call", fn, fut))
        return fut.result(timeout)

    def _send(self, cmd: tuple) -> None:
        self._idle.clear()
        self._commands.put(cmd)
        self._wake.set()

    def _retry_after(self, queued: int) -> int:
        """Seconds until the queue has likely moved: queue length over the completion rate."""
        elapsed = max(self.now(), 1e-3)
        rate = self._ended / elapsed
        return int(min(60, max(1, math.ceil(queued / rate)))) if rate > 0 else 1

    # -- the engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop:
            if self._apply_commands():
                self._publish_snapshot()  # queue limits see new arrivals before the step
            if not self.engine.has_work:
                self._close_step()
                self._publish_snapshot()
                if not self._pending:
                    self._idle.set()
                self._wait(IDLE_WAIT_S)
                continue
            self._step()
        self._apply_commands()  # adds that raced the stop end below, not in limbo
        self._abort_all("shutdown")

    def _wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout``; the time is not part of any step's period."""
        t = self._clock()
        self._wake.wait(timeout)
        self._wake.clear()
        self._waited += self._clock() - t

    def _close_step(self) -> None:
        """The previous step's loop iteration is over: log its period."""
        self.servelog.close_step(self.now(), self._waited)
        self._waited = 0.0

    def write_request_log(self, stream: RequestStream, streamed: bool) -> None:
        """Log a request's timeline once its handler is done (event loop thread)."""
        if not self.servelog.enabled or stream.times is None:
            return
        req, t = stream.req, stream.times
        t.first_token, t.last_token = req.first_token, req.last_token
        t.finished = req.finish_time
        end = stream.end
        self.servelog.request(t, req.prompt_len, req.num_output,
                              end.reason if end is not None else "abort", streamed)

    def _step(self) -> None:
        self._close_step()
        now = self.now()
        try:
            out = self.engine.step(now)
        except Exception as exc:  # noqa: BLE001 - the loop must survive any step failure
            log.exception("engine step failed; ending the requests of that batch")
            self._fail_batch(now, exc)
            return
        self._failures = 0
        if out is None:
            self._wait(BLOCKED_WAIT_S)
            return
        plan, result, ended = out
        self.metrics.observe_step(result.duration)
        self.servelog.step(now, plan, result)
        self._emit(plan, result, now)
        for req in ended:
            self._end(req)
        self._publish_snapshot()

    def _apply_commands(self) -> int:
        """Apply every queued command; returns how many there were."""
        n = 0
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return n
            n += 1
            try:
                self._apply(cmd)
            except Exception:  # noqa: BLE001 - a bad command must not stop the loop
                log.exception("engine command %s failed", cmd[0])

    def _apply(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "add":
            stream: RequestStream = cmd[1]
            with self._pending_lock:
                self._pending -= 1
            self._streams[stream.req.id] = stream
            if stream.times is not None:
                stream.times.enqueued = self.now()
            self._guarded(stream.req, lambda r: self.engine.add_request(r, self.now()))
        elif kind == "abort":
            req = cmd[1].req
            if req.id in self._streams and not req.is_finished:
                self._guarded(req, lambda r: self.engine.abort(r, self.now()) or False)
        elif kind == "call":
            fn, fut = cmd[1], cmd[2]
            try:
                fut.set_result(fn(self.engine))
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _guarded(self, req: Request, op: Callable[[Request], bool]) -> None:
        """Apply ``op`` (add or abort); unless it left the request queued, end its stream -
        also when ``op`` raised, so no client ever waits for a request the engine lost."""
        try:
            queued = op(req)
        except Exception as exc:  # noqa: BLE001 - one request's failure stays its own
            log.exception("engine command failed for request %d", req.id)
            try:
                self.engine.abort(req, self.now())
            except Exception:  # noqa: BLE001
                pass
            req.state = RequestState.ABORTED
            req.stop_reason = f"error: {type(exc).__name__}: {exc}"
            queued = False
        if not queued:
            self._end(req)

    def _emit(self, plan: StepPlan, result: StepResult, step_start: float) -> None:
        """Hand each request the tokens the scheduler accepted in the step begun at
        ``step_start``."""
        for req in [c.req for c in plan.chunks] + plan.decodes:
            stream = self._streams.get(req.id)
            if stream is None or req.num_output <= stream.emitted:
                continue
            start = req.prompt_len + stream.emitted
            ids = list(req.content.tokens[start:req.prompt_len + req.num_output])
            lps = result.logprobs.get(req.id) if result.logprobs else None
            if stream.emitted == 0:
                self.metrics.observe_first_token(req.first_token - req.arrival)
                if stream.times is not None:
                    stream.times.first_step = step_start
            else:
                self.metrics.observe_itl(req.last_token - stream.last_token_time)
            if stream.times is not None:
                stream.times.last_step = step_start
            stream.last_token_time = req.last_token
            stream.emitted = req.num_output
            stream.put(TokenEvent(ids, list(lps) if lps else None))

    def _end(self, req: Request) -> None:
        """A request left the engine (finished, aborted, rejected): tell its stream."""
        stream = self._streams.pop(req.id, None)
        release = getattr(self.engine.executor, "release", None)
        if callable(release):
            release(req.id)
        self._ended += 1
        reason = _finish_reason(req)
        e2e = req.finish_time - req.arrival if req.finish_time >= 0 else float("nan")
        self.metrics.observe_end(req.user, reason, e2e, req.prompt_len, req.num_output)
        if stream is not None and not stream.ended:
            stream.ended = True
            stream.put(EndEvent(reason, req.stop_reason, req.prompt_len, req.num_output,
                                req.cached_tokens))

    def _fail_batch(self, now: float, exc: Exception) -> None:
        """A step raised: the running batch is lost; queued requests stay - unless steps keep
        failing with nothing running, when a queued request must be the cause: shed them."""
        self._failures += 1
        sched = self.engine.scheduler
        victims = list(sched.running)
        if self._failures >= 2 and not victims:
            victims = list(sched.waiting)
        for req in victims:
            req.stop_reason = f"error: {type(exc).__name__}: {exc}"
            try:
                self.engine.abort(req, now)
            except Exception:  # noqa: BLE001
                log.exception("abort after a failed step failed for request %d", req.id)
            req.state = RequestState.ABORTED
            self._end(req)
        self._publish_snapshot()

    def _abort_all(self, why: str) -> None:
        now = self.now()
        for stream in list(self._streams.values()):
            req = stream.req
            req.stop_reason = req.stop_reason or why
            if not req.is_finished:
                self.engine.abort(req, now)
            self._end(req)
        self._publish_snapshot()

    def _publish_snapshot(self) -> None:
        sched, kv = self.engine.scheduler, self.engine.kv
        self.snapshot = EngineSnapshot(
            waiting=len(sched.waiting), running=len(sched.running),
            swapped=sum(1 for r in sched.waiting if r.state == RequestState.SWAPPED),
            kv_used=kv.num_used, kv_total=kv.num_blocks, kv_cached=kv.num_cached,
            preemptions=sched.num_preemptions, steps=self.engine.steps, pending=self._pending)


def _finish_reason(req: Request) -> str:
    if req.state == RequestState.FINISHED:
        return "stop" if req.stop_reason == "stop" else "length"
    if req.state == RequestState.REJECTED:
        return "rejected"
    if req.stop_reason.startswith("error"):
        return "error"
    return "abort"
