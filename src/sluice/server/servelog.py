"""The server's own log of what it did and when: one JSON line per engine step and per request.

Why the server measures itself: a twin (``sluice bench --twin``) must be calibrated on what the
deployment did, never on what the client measured. Two things the simulator's step does not
see are logged here:

* a step's *period* - wall time from its start to the start of the next step, less any time
  the loop sat waiting for work. The simulator's step runs start to start; a real loop
  iteration also schedules, updates, hands tokens to the HTTP side and competes with it for
  the GIL, none of which the forward's ``duration_s`` covers.
* a request's *front end* - received by the app (before its body is read), submitted to the
  engine, first and last chunk handed to the transport - on the engine's clock, so the time
  outside engine steps can be fitted (``sluice perf calibrate``) and added by the twin.

Step lines are :class:`BatchStats` fields + ``duration_s`` (the forward) + ``start_s`` and
``period_s``; request lines carry ``"request": id``. Two threads write (the engine thread steps,
the event loop requests), so every write holds a lock. See docs/performance-model.md.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import IO, Any

from sluice.core.plan import StepPlan, StepResult, step_line
from sluice.errors import ConfigError


class ServeLog:
    """Appends step and request lines to ``path``; ``None`` path = log nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._f: IO[str] | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, Any] | None = None  # the last step, waiting for its period
        if self.path is not None:
            try:
                self._f = self.path.open("a")
            except OSError as e:
                raise ConfigError(f"step log {path}: cannot open for writing "
                                  f"({e.strerror})") from None

    @property
    def enabled(self) -> bool:
        return self._f is not None

    def meta(self, **fields: Any) -> None:
        """A line about the log itself (e.g. the clock's origin), skipped by calibration."""
        if self._f is not None:
            self._write(dict(fields))

    # -- steps (engine thread) --------------------------------------------------------------
    def step(self, start: float, plan: StepPlan, result: StepResult) -> None:
        """Hold a step's line until :meth:`close_step` knows its period."""
        if self._f is None:
            return
        row = step_line(plan, result)
        row["start_s"] = start
        self._pending = row

    def close_step(self, now: float, waited: float) -> None:
        """The loop reached ``now`` (a new step starts, or it goes idle) having waited
        ``waited`` seconds for work since the pending step started: write that step."""
        row, self._pending = self._pending, None
        if row is None:
            return
        row["period_s"] = max(now - row["start_s"] - waited, row["duration_s"])
        self._write(row)

    # -- requests (event loop) --------------------------------------------------------------
    def request(self, times: "RequestTimes", prompt_tokens: int, output_tokens: int,
                reason: str, stream: bool) -> None:
        if self._f is None:
            return
        row = {"request": times.id, "stream": stream, "reason": reason,
               "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}
        row.update({f"{k}_s": v for k, v in times.stamps().items()})
        self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            if self._f is not None:
                self._f.write(line)
                self._f.flush()

    def close(self, now: float) -> None:
        self.close_step(now, 0.0)
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None


class LoopProbe:
    """Measures how long the event loop takes to run a callback another thread hands it.

    That is the wait a request arriving on a socket sees before the app is called (the
    ``received`` stamp): the loop must wake, win the GIL from the engine thread and run what
    is queued ahead. A thread pokes the loop at random moments (Poisson, mean ``every_s``)
    and the log gets ``{"loop_lag_s": ...}`` lines, which calibration averages.
    """

    def __init__(self, loop: Any, clock: Any, log: ServeLog, every_s: float = 0.02,
                 seed: int = 0) -> None:
        import random

        self.loop, self.clock, self.log, self.every_s = loop, clock, log, every_s
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sluice-loop-probe",
                                        daemon=True)

    def start(self) -> None:
        if self.log.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.expovariate(1.0 / self.every_s)):
            t = self.clock()
            try:
                self.loop.call_soon_threadsafe(self._record, t)
            except RuntimeError:  # the loop closed
                return

    def _record(self, t: float) -> None:
        self.log.meta(loop_lag_s=self.clock() - t)


class RequestTimes:
    """One request's timeline on the engine clock (seconds; NaN = did not happen).

    ``received`` the app saw the request (headers parsed, body not yet read); ``submitted``
    the handler queued it for the engine thread; ``enqueued`` the engine thread added it to
    the scheduler; ``first_step``/``last_step`` start of the step that produced its first/last
    token; ``first_sent``/``last_sent`` the first content chunk/the final chunk was handed to
    the transport; ``finished`` the engine ended it.
    """

    FIELDS = ("received", "submitted", "enqueued", "first_step", "last_step", "first_token",
              "last_token", "finished", "first_sent", "last_sent")

    __slots__ = ("id",) + FIELDS

    def __init__(self, req_id: int, received: float) -> None:
        self.id = req_id
        for k in self.FIELDS:
            setattr(self, k, math.nan)
        self.received = received

    def stamps(self) -> dict[str, float | None]:
        return {k: (None if math.isnan(v) else v)
                for k in self.FIELDS for v in [getattr(self, k)]}
