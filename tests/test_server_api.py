"""The OpenAI-compatible API on the tiny model, through the official ``openai`` client on a live
loopback server: completions, chat, streaming, usage, stop strings, sampling, logprobs, the
scheduler-visible fields, errors, health and metrics."""

from __future__ import annotations

import httpx
import pytest

import openai
import torch  # noqa: F401 - required, never skipped

from test_server_helpers import assert_kv_empty, live, wait_idle, tiny_app

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app, runtime = tiny_app(tmp_path_factory.mktemp("tiny"))
    with live(app) as srv:
        srv.runtime = runtime
        srv.tokenizer = app.state.info.tokenizer
        yield srv


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    root = server.base_url.removesuffix("/v1")
    assert httpx.get(root + "/health").json() == {"status": "ok"}
    client.completions.create(model="tiny", prompt="metrics", max_tokens=3, user="carol",
                              **GREEDY)
    text = httpx.get(root + "/metrics").text
    for name in ("sluice_requests_waiting ", "sluice_requests_running ",
                 "sluice_kv_usage_ratio ", "sluice_preemptions_total ",
                 "sluice_time_to_first_token_seconds_bucket",
                 "sluice_inter_token_latency_seconds_count",
                 "sluice_e2e_request_latency_seconds_sum",
                 'sluice_tenant_service_total{tenant="carol"} 13'):  # 7 prompt + 2 x 3 output
        assert name in text, name


def test_completion_stream_and_usage_agree(client):
    prompt = "Hello, sluice!"
    full = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, **GREEDY)
    choice = full.choices[0]
    assert choice.finish_reason == "length"
    assert full.usage.prompt_tokens == len(prompt.encode())  # byte-level tokenizer
    assert full.usage.completion_tokens == 12
    assert full.usage.total_tokens == full.usage.prompt_tokens + 12
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                            stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_token_id_prompt_equals_text_prompt(server, client):
    by_text = client.completions.create(model="tiny", prompt="abc", max_tokens=6, **GREEDY)
    ids = server.tokenizer.encode("abc")
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text


def test_chat_and_chat_stream(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, **GREEDY)
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.usage.completion_tokens == 10
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10,
                                                 stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_output(client):
    base = client.completions.create(model="tiny", prompt="stop here", max_tokens=24, **GREEDY)
    text = base.choices[0].text
    stop = next(text[i:i + 2] for i in range(4, len(text) - 2)
                if "\ufffd" not in text[i:i + 2] and text[i:i + 2].strip())
    want = text[:text.find(stop)]
    cut = client.completions.create(model="tiny", prompt="stop here", max_tokens=24, stop=[stop],
                                    **GREEDY)
    assert cut.choices[0].text == want
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model="tiny", prompt="stop here", max_tokens=24,
                                              stop=stop, stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_logprobs(client):
    kw = dict(model="tiny", prompt="dice", max_tokens=8, temperature=0.9, top_p=0.9, seed=11,
              extra_body={"top_k": 50, "ignore_eos": True})
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text
    lp = client.completions.create(model="tiny", prompt="dice", max_tokens=5, logprobs=1,
                                   **GREEDY).choices[0].logprobs
    assert len(lp.token_logprobs) == 5 and all(x <= 0 for x in lp.token_logprobs)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                   "content": "x"}],
                                          max_tokens=4, logprobs=True, **GREEDY)
    assert len(chat.choices[0].logprobs.content) == 4


def test_scheduler_fields_reach_the_policy(server, client):
    seen = []
    policy = server.runtime.engine.policy
    policy.on_arrival = lambda req, view: seen.append(req)
    try:
        client.completions.create(
            model="tiny", prompt="agent turn", max_tokens=3, user="alice", temperature=0,
            extra_body={"priority": 2, "slo": {"ttft_ms": 500, "tpot_ms": 50},
                        "program_id": 9, "turn": 1, "last_turn": False})
    finally:
        del policy.on_arrival
    (req,) = seen
    assert (req.user, req.priority, req.program, req.turn, req.last_turn) == (
        "alice", 2, 9, 1, False)
    assert (req.slo.ttft, req.slo.tpot) == (0.5, 0.05)


@pytest.mark.parametrize("kwargs, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -3}, "max_tokens"),
    ({"model": "gpt-4"}, "model"),
    ({"prompt": "x" * 3000}, "prompt"),
    ({"max_tokens": 2040, "prompt": "x" * 20}, "max_tokens"),
    ({"extra_body": {"temperature": "hot"}}, "temperature"),
    ({"extra_body": {"slo": {"ttft_ms": -1}}}, "slo.ttft_ms"),
    ({"extra_body": {"priority": "high"}}, "priority"),
])
def test_bad_requests_get_openai_400(client, kwargs, param):
    args = {"model": "tiny", "prompt": "hello", "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(**args)
    err = info.value.body
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_malformed_json_and_unknown_route(server, client):
    url = server.base_url + "/completions"
    for raw in (b"{not json", b"[1, 2]", b'{"model": "tiny", "prompt": {"a": 1}}'):
        r = httpx.post(url, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.base_url + "/chat/completions", json={"model": "tiny",
                                                               "messages": []})
    assert r.status_code == 400
    r = httpx.get(server.base_url + "/nope")
    assert r.status_code == 404 and "error" in r.json()
    ok = client.completions.create(model="tiny", prompt="still alive", max_tokens=2)
    assert ok.usage.completion_tokens >= 1


def test_client_disconnect_frees_kv(server, client):
    stream = client.completions.create(model="tiny", prompt="long one " * 10, max_tokens=1000,
                                       stream=True, **GREEDY)
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_idle(server.runtime)
    assert_kv_empty(server.runtime)
    assert server.runtime.metrics.finished["abort"] >= 1
