"""The engine runtime behind a live server, with a deterministic fake executor: a concurrent
load with random client disconnects, preemption under a small KV cache, queue limits, a failing
batch that must not take the server down, and draining on shutdown."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

import openai

from test_server_helpers import (ByteTokenizer, assert_kv_empty, consume_stream, fake_app,
                                 fake_engine, fake_token, live, wait_idle)


def expected_text(prompt: str, n: int) -> str:
    toks = list(prompt.encode())
    out = []
    for _ in range(n):
        t = fake_token(toks)
        toks.append(t)
        out.append(t)
    return ByteTokenizer().decode(out)


async def _one(client, i: int, rng: random.Random) -> tuple[str, str, int | None, bool]:
    """Stream one completion; some clients hang up early. Returns (prompt, text, usage, left)."""
    prompt = f"request {i} " + "x" * rng.randint(0, 40)
    leave_after = rng.randint(1, 5) if rng.random() < 0.3 else None
    max_tokens = rng.randint(5, 40) if leave_after is None else 300  # still running on exit
    stream = await client.completions.create(
        model="fake", prompt=prompt, max_tokens=max_tokens, stream=True, temperature=0,
        stream_options={"include_usage": True}, user=f"tenant{i % 3}")
    text, usage, left = await consume_stream(stream, leave_after)
    if not left:
        assert usage == max_tokens
    return prompt, text, max_tokens, left


def test_concurrent_streams_with_disconnects_leave_no_kv():
    engine = fake_engine(num_blocks=64, block_size=4, max_num_seqs=8, delay=0.002)
    app, runtime = fake_app(engine)
    rng = random.Random(7)

    async def main():
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key="x", max_retries=0) as c:
            return await asyncio.gather(*[_one(c, i, rng) for i in range(64)])

    with live(app) as srv:
        results = asyncio.run(main())
        wait_idle(runtime)
        assert_kv_empty(runtime)
        m = runtime.metrics
        left = sum(1 for *_, gone in results if gone)
        assert 0 < left < 64
        # every request ended exactly once: finished normally or aborted
        assert sum(m.finished.values()) == 64
        assert 0 < m.finished["abort"] <= left
        assert engine.scheduler.num_preemptions > 0  # the small cache forced preemptions
        for prompt, text, n, gone in results:
            want = expected_text(prompt, n)
            if gone:
                assert want.startswith(text)  # a prefix: nothing lost or repeated
            else:
                assert text == want
        assert engine.executor.released >= set(range(64))


def test_queue_limit_answers_429_with_retry_after():
    engine = fake_engine(max_num_seqs=1, delay=0.01)
    app, runtime = fake_app(engine, max_queue=2)

    async def main():
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
            body = {"model": "fake", "prompt": "hello", "max_tokens": 30}
            return await asyncio.gather(*[c.post("/completions", json=body) for _ in range(12)])

    with live(app) as srv:
        responses = asyncio.run(main())
        codes = sorted(r.status_code for r in responses)
        assert 200 in codes and 429 in codes
        busy = next(r for r in responses if r.status_code == 429)
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "queue_full"
        wait_idle(runtime)
        assert_kv_empty(runtime)


def test_failing_batch_does_not_stop_the_server():
    engine = fake_engine()
    app, runtime = fake_app(engine)
    with live(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="fake", prompt="hi", max_tokens=4, user="boom")
        ok = client.completions.create(model="fake", prompt="hi", max_tokens=4)
        assert ok.choices[0].text == expected_text("hi", 4)
        wait_idle(runtime)
        assert_kv_empty(runtime)


def test_policy_failure_on_arrival_fails_only_that_request():
    engine = fake_engine()
    app, runtime = fake_app(engine)

    def on_arrival(req, view):
        if req.user == "odd":
            raise ValueError("policy cannot place this request")

    engine.policy.on_arrival = on_arrival
    with live(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="fake", prompt="hi", max_tokens=3, user="odd")
        ok = client.completions.create(model="fake", prompt="hi", max_tokens=3)
        assert ok.usage.completion_tokens == 3
        wait_idle(runtime)
        assert_kv_empty(runtime)


def test_shutdown_drains_in_flight_requests():
    engine = fake_engine(max_num_seqs=2, delay=0.005)
    app, runtime = fake_app(engine)
    srv_holder = {}

    async def main():
        async with openai.AsyncOpenAI(base_url=srv_holder["s"].base_url, api_key="x",
                                      max_retries=0) as c:
            tasks = [asyncio.create_task(c.completions.create(
                model="fake", prompt=f"p{i}", max_tokens=20)) for i in range(6)]
            await asyncio.sleep(0.05)
            srv_holder["s"].server.should_exit = True  # what uvicorn does on SIGTERM
            return await asyncio.gather(*tasks)

    with live(app) as srv:
        srv_holder["s"] = srv
        outs = asyncio.run(main())
    assert [o.choices[0].finish_reason for o in outs] == ["length"] * 6
    assert [o.choices[0].text for o in outs] == [expected_text(f"p{i}", 20) for i in range(6)]
    assert runtime.draining and not engine.has_work


def test_non_streaming_client_that_leaves_is_aborted():
    engine = fake_engine(delay=0.01)
    app, runtime = fake_app(engine)

    async def leave_early():
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as c:
            body = {"model": "fake", "prompt": "slow", "max_tokens": 400}
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.post("/completions", json=body), 0.3)

    with live(app) as srv:
        asyncio.run(leave_early())
        wait_idle(runtime)
        assert runtime.metrics.finished == {"abort": 1}
        assert_kv_empty(runtime)
