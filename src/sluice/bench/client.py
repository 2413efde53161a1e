"""Async load generator: replay a workload against any OpenAI-compatible endpoint.

Each request is sent at its arrival time (open loop: a slow server does not slow the arrivals)
as a streaming ``/v1/completions`` call with ``max_tokens`` and ``ignore_eos`` (vLLM, SGLang and
sluice honour it), and its timeline is measured on the client the way ``vllm bench serve``
does: TTFT = first content chunk - send, ITL = gaps between content chunks, E2EL = last byte -
send. Closed-loop workloads (agent programs) get their follow-up turns from
``workload.on_request_end`` exactly as in simulation. The result is a list of
:class:`RequestRecord` - the same rows the simulator produces - so the summary is the same.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from sluice.bench.prompts import DEFAULT_RANGE, prompt_ids
from sluice.core.request import Request, RequestState
from sluice.metrics.records import RequestRecord
from sluice.workload.base import Workload


@dataclass
class BenchConfig:
    base_url: str  # ends with /v1
    model: str
    api_key: str = "EMPTY"
    token_range: tuple[int, int] = DEFAULT_RANGE
    max_concurrency: int | None = None
    timeout: float = 600.0
    sluice_fields: bool = True  # send user/priority/slo/program fields (sluice reads them)


@dataclass
class BenchRun:
    records: list[RequestRecord]
    itls: np.ndarray
    duration: float
    errors: dict[str, int] = field(default_factory=dict)


class _Outcome:
    """What one streamed response told us."""

    def __init__(self) -> None:
        self.chunk_times: list[float] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.status = 0


class BenchClient:
    """Sends one workload; ``run()`` returns the records once every request has ended."""

    def __init__(self, cfg: BenchConfig, workload: Workload) -> None:
        self.cfg = cfg
        self.workload = workload
        self._t0 = 0.0
        self._itls: list[float] = []
        self._records: list[RequestRecord] = []
        self._errors: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None

    def now(self) -> float:
        return time.perf_counter() - self._t0

    async def run(self) -> BenchRun:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        headers = {"Authorization": f"Bearer {self.cfg.api_key}"}
        async with httpx.AsyncClient(base_url=self.cfg.base_url.rstrip("/"), headers=headers,
                                     timeout=self.cfg.timeout, limits=limits) as http:
            self._http = http
            self._t0 = time.perf_counter()
            for req in self.workload.requests():
                delay = req.arrival - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._spawn(req)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        self._records.sort(key=lambda r: r.id)
        return BenchRun(self._records, np.asarray(self._itls, dtype=float), self.now(),
                        self._errors)

    def _spawn(self, req: Request) -> None:
        task = asyncio.create_task(self._one(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, req: Request) -> None:
        delay = req.arrival - self.now()
        if delay > 0:  # a closed-loop follow-up waiting for its tool time
            await asyncio.sleep(delay)
        if self._sem is not None:
            async with self._sem:
                out = await self._send(req)
        else:
            out = await self._send(req)
        self._finish(req, out)
        for follow in self.workload.on_request_end(req, req.finish_time):
            self._spawn(follow)

    def _body(self, req: Request) -> dict[str, Any]:
        lo, hi = self.cfg.token_range
        body: dict[str, Any] = {
            "model": self.cfg.model, "prompt": prompt_ids(req.content, lo, hi),
            "max_tokens": req.max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True,
        }
        if self.cfg.sluice_fields:
            body["user"] = req.user
            if req.priority:
                body["priority"] = req.priority
            if req.slo is not None and (req.slo.ttft or req.slo.tpot):
                body["slo"] = {k: v * 1000 for k, v in (("ttft_ms", req.slo.ttft),
                                                        ("tpot_ms", req.slo.tpot)) if v}
            if req.program is not None:
                body.update(program_id=req.program, turn=req.turn, last_turn=req.last_turn)
        return body

    async def _send(self, req: Request) -> _Outcome:
        out = _Outcome()
        body = self._body(req)
        req.arrival = self.now()  # latencies count from the actual send, as vllm bench does
        try:
            async with self._http.stream("POST", "/completions", json=body) as resp:
                out.status = resp.status_code
                if resp.status_code != 200:
                    await resp.aread()
                    out.error = f"http_{resp.status_code}"
                    return out
                async for line in resp.aiter_lines():
                    if self._on_line(line, out):
                        break
        except httpx.HTTPError as exc:
            out.error = type(exc).__name__
        return out

    def _on_line(self, line: str, out: _Outcome) -> bool:
        """Parse one SSE line; True at ``[DONE]``."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        if data == "[DONE]":
            return True
        try:
            obj = json.loads(data)
        except json.JSONDecodeError:
            out.error = "bad_sse"
            return True
        if "error" in obj:
            out.error = "stream_error"
            return True
        if obj.get("usage"):
            out.usage = obj["usage"]
        for choice in obj.get("choices") or []:
            text = choice.get("text") or (choice.get("delta") or {}).get("content")
            if text:
                out.chunk_times.append(self.now())
            if choice.get("finish_reason"):
                out.finish_reason = choice["finish_reason"]
        return False

    def _finish(self, req: Request, out: _Outcome) -> None:
        """Fill the request's timeline from what the client saw, and record it."""
        end = self.now()
        req.finish_time = end
        req.first_scheduled = math.nan  # the server's queueing is not visible from here
        times = out.chunk_times
        usage = out.usage or {}
        if out.error is None and times:
            req.state = RequestState.FINISHED
            req.first_token, req.last_token = times[0], times[-1]
            req.num_output = int(usage.get("completion_tokens") or len(times))
            req.stop_reason = out.finish_reason or "length"
            details = usage.get("prompt_tokens_details") or {}
            req.cached_tokens = int(details.get("cached_tokens") or 0)
            self._itls.extend(np.diff(times).tolist())
            req.content.append_virtual(req.output_key, req.num_output)  # for the next turn
        else:
            rejected = out.status in (400, 413, 429)
            req.state = RequestState.REJECTED if rejected else RequestState.ABORTED
            req.stop_reason = out.error or "no_output"
            self._errors[req.stop_reason] = self._errors.get(req.stop_reason, 0) + 1
        self._records.append(RequestRecord.of(req))


async def fetch_model(base_url: str, api_key: str = "EMPTY") -> tuple[str, int | None]:
    """The first model the endpoint lists and its context length (if it says)."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(base_url.rstrip("/") + "/models",
                           headers={"Authorization": f"Bearer {api_key}"})
        r.raise_for_status()
        data = r.json().get("data") or []
    if not data:
        raise ValueError(f"{base_url}/models lists no model")
    return data[0]["id"], data[0].get("max_model_len")


def run_bench(cfg: BenchConfig, workload: Workload) -> BenchRun:
    return asyncio.run(BenchClient(cfg, workload).run())
