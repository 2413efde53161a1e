"""What the server itself reports during a benchmark (sluice's ``/metrics``), when it does.

Why sample the server: the simulator's summary has engine-side numbers a client cannot measure
(steps, KV blocks in use over time, preemptions). A sluice server exposes them in Prometheus
format, so the bench polls ``/metrics`` during the run and fills the same keys. For other
servers these keys stay ``None`` - the summary keeps one shape either way.

Each poll also times a ``GET /health`` round trip from inside the benchmark's own event loop:
the transport a request and its response cross outside the server (client stack, loopback or
network, the server's socket handling before the app sees the request), under the same load.
``sluice bench --twin`` adds its mean to simulated TTFT and E2E.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

POLL_S = 0.25


def served_policy(text: str) -> str | None:
    """The ``policy`` label of sluice's ``sluice_info`` sample, if the server has one."""
    for line in text.splitlines():
        if line.startswith("sluice_info{"):
            _, _, rest = line.partition('policy="')
            return rest.partition('"')[0] or None
    return None


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition: ``{name: value}``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return out


@dataclass
class ServerStats:
    available: bool = False
    steps_start: float = 0.0
    steps_end: float = 0.0
    kv_total: float = 0.0
    kv_used: list[float] = field(default_factory=list)
    policy: str | None = None
    preempt_start: float = 0.0
    preempt_end: float = 0.0
    rtts: list[float] = field(default_factory=list)  # GET /health round trips (s)

    @property
    def preemptions(self) -> int | None:
        return int(self.preempt_end - self.preempt_start) if self.available else None

    def summary_keys(self) -> dict[str, float | int | None]:
        """The simulate-summary keys the server can answer (``None`` when it cannot)."""
        if not self.available or not self.kv_used:
            return {"steps": None, "kv_blocks_total": None, "kv_peak_used_blocks": None,
                    "kv_mean_utilization": None}
        return {"steps": int(self.steps_end - self.steps_start),
                "kv_blocks_total": int(self.kv_total),
                "kv_peak_used_blocks": int(max(self.kv_used)),
                "kv_mean_utilization": (sum(self.kv_used) / len(self.kv_used) / self.kv_total
                                        if self.kv_total else 0.0)}


class ServerSampler:
    """Polls ``<root>/metrics`` in the background while a benchmark runs."""

    def __init__(self, base_url: str) -> None:
        root = base_url.rstrip("/")
        root = root[:-3] if root.endswith("/v1") else root
        self.url = root + "/metrics"
        self.health_url = root + "/health"
        self.stats = ServerStats()
        self._task: asyncio.Task | None = None

    async def _read(self, http: httpx.AsyncClient) -> dict[str, float] | None:
        try:
            r = await http.get(self.url)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        m = parse_prometheus(r.text)
        if "sluice_kv_blocks_used" not in m:
            return None
        self.stats.policy = served_policy(r.text) or self.stats.policy
        return m

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=5)
        first = await self._read(self._http)
        if first is None:
            await self._http.aclose()
            return
        s = self.stats
        s.available = True
        s.steps_start = s.steps_end = first.get("sluice_steps_total", 0.0)
        s.kv_total = first.get("sluice_kv_blocks_total", 0.0)
        s.preempt_start = s.preempt_end = first.get("sluice_preemptions_total", 0.0)
        self._task = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._sample()

    async def _ping(self) -> None:
        t = time.perf_counter()
        try:
            r = await self._http.get(self.health_url)
        except httpx.HTTPError:
            return
        if r.status_code == 200:
            self.stats.rtts.append(time.perf_counter() - t)

    async def _sample(self) -> None:
        await self._ping()
        m = await self._read(self._http)
        if m is not None:
            self.stats.kv_used.append(m.get("sluice_kv_blocks_used", 0.0))
            self.stats.steps_end = m.get("sluice_steps_total", self.stats.steps_end)
            self.stats.preempt_end = m.get("sluice_preemptions_total", self.stats.preempt_end)

    async def stop(self) -> ServerStats:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self._sample()
            await self._http.aclose()
        return self.stats
