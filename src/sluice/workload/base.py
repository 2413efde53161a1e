"""The Workload contract between traffic sources and the simulation loop.

Open-loop sources (traces, arrival generators) yield requests in arrival order. Closed-loop
sources (agent programs, closed populations) also react to completions: when a request ends
(finished, aborted or rejected), ``on_request_end`` may return follow-up requests, e.g. the
program's next turn arriving after its tool ran. The loop never looks ahead in ``requests()``
further than the next arrival, so traces can stream.
"""

from __future__ import annotations

from typing import Iterator, Protocol

from sluice.core.request import Request


class Workload(Protocol):
    name: str

    def requests(self) -> Iterator[Request]:
        """Open-loop arrivals, sorted by ``arrival`` (ties in any fixed order)."""

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        """Follow-ups caused by ``req`` ending at ``now``; each has ``arrival >= now``."""


class ListWorkload:
    """A fixed list of requests (tests, small scenarios)."""

    def __init__(self, reqs: list[Request], name: str = "list") -> None:
        self.name = name
        self._reqs = sorted(reqs, key=lambda r: (r.arrival, r.id))

    def requests(self) -> Iterator[Request]:
        return iter(self._reqs)

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        return []
