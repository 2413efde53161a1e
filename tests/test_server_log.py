"""The server's own log (``--step-log``): step lines with their period, request lines with a
causally ordered timeline on the engine clock, and the event-loop probe. Orders and joins are
checked, never durations."""

from __future__ import annotations

import asyncio
import json
import math
import time

import openai

from test_server_helpers import ByteTokenizer, FakeSampling, fake_engine, live, wait_idle

from sluice.perf.calibrate import fit_frontend, read_log
from sluice.server.servelog import ServeLog

STEP_KEYS = {"prefill_tokens", "prefill_seqs", "prefill_attn", "prefill_ctx", "decode_seqs",
             "decode_ctx", "duration_s", "start_s", "period_s"}
ORDER = ("received_s", "submitted_s", "enqueued_s", "first_step_s", "first_token_s",
         "first_sent_s")


def logged_app(path, delay: float = 0.002):
    from sluice.server.app import create_app
    from sluice.server.intake import ModelInfo
    from sluice.server.metrics import ServerMetrics
    from sluice.server.runtime import EngineRuntime

    engine = fake_engine(num_blocks=64, block_size=4, max_num_seqs=4, delay=delay)
    runtime = EngineRuntime(engine, ServerMetrics("fake"), servelog=ServeLog(path))
    info = ModelInfo("fake", ByteTokenizer(), engine.scheduler.cfg.max_model_len, FakeSampling)
    return create_app(runtime, info, drain_timeout=10.0), runtime


async def _requests(base_url: str, n: int) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as c:
        async def one(i: int) -> None:
            stream = await c.completions.create(model="fake", prompt=f"hello {i} " * (i + 1),
                                                max_tokens=5 + i, stream=True, temperature=0)
            async for _ in stream:
                pass
        await asyncio.gather(*[one(i) for i in range(n)])
        await c.completions.create(model="fake", prompt="whole", max_tokens=3)  # not streamed


def test_request_and_step_lines_are_complete_and_causal(tmp_path):
    path = tmp_path / "steps.jsonl"
    app, runtime = logged_app(path)
    with live(app) as srv:
        asyncio.run(_requests(srv.base_url, 6))
        wait_idle(runtime)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["clock"] == "monotonic" and "clock_origin" in rows[0]
    steps = [r for r in rows if "duration_s" in r]
    reqs = [r for r in rows if "request" in r]
    assert steps and all(STEP_KEYS <= set(s) for s in steps)
    for a, b in zip(steps, steps[1:]):  # a period ends no later than the next step starts
        assert a["start_s"] < b["start_s"]
        assert a["duration_s"] <= a["period_s"] <= b["start_s"] - a["start_s"]
    starts = {s["start_s"] for s in steps}
    assert len(reqs) == 7 and sum(r["stream"] for r in reqs) == 6
    for r in reqs:
        assert r["reason"] == "length" and r["output_tokens"] > 0
        times = [r[k] for k in ORDER]
        assert times == sorted(times), r
        assert r["first_step_s"] <= r["last_step_s"] <= r["last_token_s"] <= r["last_sent_s"]
        assert r["first_token_s"] <= r["last_token_s"] == r["finished_s"]
        assert {r["first_step_s"], r["last_step_s"]} <= starts  # the join calibration makes
    log = read_log(path)
    assert log.period is not None and len(log.requests) == 7
    fe = fit_frontend(log)
    assert fe is not None and fe["requests"] == 6  # streamed ones only
    assert all(math.isfinite(fe[k]) for k in fe)


def test_loop_probe_lines(tmp_path):
    from sluice.server.servelog import LoopProbe

    path = tmp_path / "probe.jsonl"
    log = ServeLog(path)

    async def main() -> None:
        probe = LoopProbe(asyncio.get_running_loop(), time.monotonic, log, every_s=0.002)
        probe.start()
        while "loop_lag_s" not in path.read_text():
            await asyncio.sleep(0.005)
        probe.stop()

    asyncio.run(main())
    log.close(0.0)
    lags = [json.loads(x)["loop_lag_s"] for x in path.read_text().splitlines()]
    assert lags and all(v >= 0 for v in lags)
    assert ServeLog(None).enabled is False


def test_no_log_no_lines(tmp_path):
    app, runtime = logged_app(None)
    with live(app) as srv:
        asyncio.run(_requests(srv.base_url, 2))
        wait_idle(runtime)
    assert not runtime.servelog.enabled and list(tmp_path.iterdir()) == []
