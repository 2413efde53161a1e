"""Output-length predictors, a plug-in for length-aware policies (sjf, jitserve, past_future).

Why a plug-in: JITServe, Past-Future and SJF differ in how they *use* a length estimate, not in
how they get it, and comparing them fairly needs the same estimate. Three kinds:

* ``none`` - no knowledge: the remaining budget ``max_tokens - generated`` (the safe bound).
* ``history`` - the ``quantile`` of the last ``window`` finished outputs (optionally per tenant),
  *conditioned on what the request has already generated*: only lengths longer than the tokens
  produced so far count, so the estimate is refined as tokens are generated (JITServe's point).
  Until ``min_samples`` such lengths exist it falls back to ``none``.
* ``oracle`` - the simulator's true output length. It reads ``Request.true_output``, which
  nothing else in ``policies/`` may read (DESIGN principle 3): results with it are upper bounds.
* ``given`` - the request's ``predicted_output`` field (e.g. from an external model), else ``none``.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import deque

from sluice.core.request import Request
from sluice.errors import ConfigError

PREDICTORS = ("none", "history", "oracle", "given")


class Predictor:
    """Base = ``none``: predicts the whole remaining budget."""

    name = "none"

    def remaining(self, req: Request) -> int:
        """Predicted output tokens ``req`` still has to generate (>= 1 while it runs)."""
        return max(1, req.max_tokens - req.num_output)

    def observe(self, req: Request) -> None:
        """A request finished with ``req.num_output`` tokens."""


class OraclePredictor(Predictor):
    """Upper bound only: the simulator's ground truth."""

    name = "oracle"

    def remaining(self, req: Request) -> int:
        true = req.true_output if req.true_output is not None else req.max_tokens
        return max(1, min(true, req.max_tokens) - req.num_output)


class GivenPredictor(Predictor):
    name = "given"

    def remaining(self, req: Request) -> int:
        if req.predicted_output is None:
            return super().remaining(req)
        left = min(req.predicted_output, req.max_tokens) - req.num_output
        return max(1, left)


class _Window:
    """The last ``size`` values, also kept sorted for O(log n) conditional quantiles."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fifo: deque[int] = deque()
        self.sorted: list[int] = []

    def add(self, x: int) -> None:
        self.fifo.append(x)
        insort(self.sorted, x)
        if len(self.fifo) > self.size:
            old = self.fifo.popleft()
            del self.sorted[bisect_right(self.sorted, old) - 1]

    def quantile_above(self, floor: int, q: float, min_samples: int) -> int | None:
        """The ``q`` quantile of values > ``floor`` (nearest rank), or None if too few."""
        i = bisect_right(self.sorted, floor)
        n = len(self.sorted) - i
        if n < min_samples:
            return None
        return self.sorted[i + min(n - 1, int(q * n))]


class HistoryPredictor(Predictor):
    name = "history"

    def __init__(self, quantile: float = 0.5, window: int = 1000, per_tenant: bool = False,
                 min_samples: int = 10) -> None:
        if not 0 < quantile <= 1:
            raise ConfigError(f"predictor quantile must be in (0, 1], got {quantile}")
        if window < 1 or min_samples < 1:
            raise ConfigError("predictor window and min_samples must be >= 1")
        self.q = quantile
        self.window = int(window)
        self.per_tenant = per_tenant
        self.min_samples = int(min_samples)
        self._all = _Window(self.window)
        self._by_user: dict[str, _Window] = {}

    def observe(self, req: Request) -> None:
        if req.num_output < 1:
            return
        self._all.add(req.num_output)
        if self.per_tenant:
            w = self._by_user.get(req.user)
            if w is None:
                w = self._by_user[req.user] = _Window(self.window)
            w.add(req.num_output)

    def remaining(self, req: Request) -> int:
        done = req.num_output
        est = None
        if self.per_tenant and req.user in self._by_user:
            est = self._by_user[req.user].quantile_above(done, self.q, self.min_samples)
        if est is None:
            est = self._all.quantile_above(done, self.q, self.min_samples)
        if est is None:
            return super().remaining(req)
        return max(1, min(est, req.max_tokens) - done)


def make_predictor(kind: str, quantile: float = 0.5, window: int = 1000,
                   per_tenant: bool = False, min_samples: int = 10) -> Predictor:
    """The predictor named ``kind`` (one of :data:`PREDICTORS`)."""
    if kind == "none":
        return Predictor()
    if kind == "history":
        return HistoryPredictor(float(quantile), int(window), bool(per_tenant), int(min_samples))
    if kind == "oracle":
        return OraclePredictor()
    if kind == "given":
        return GivenPredictor()
    raise ConfigError(f"unknown predictor {kind!r}; valid: {', '.join(PREDICTORS)}")


PREDICTOR_OPTIONS = {"predictor": "history", "quantile": 0.5, "window": 1000,
                     "per_tenant": False, "min_samples": 10}


def predictor_from(opts: dict) -> Predictor:
    """Build the predictor a policy's options describe (keys of :data:`PREDICTOR_OPTIONS`)."""
    return make_predictor(str(opts["predictor"]), opts["quantile"], opts["window"],
                          opts["per_tenant"], opts["min_samples"])
