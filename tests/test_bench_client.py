"""``sluice bench`` against our own server on loopback: it replays a workload with streaming,
measures every request, and prints the same summary keys as ``sluice simulate``."""

from __future__ import annotations

import json
import socket

import pytest

import torch  # noqa: F401 - required, never skipped

from test_server_helpers import fake_app, fake_engine, live, tiny_app

from sluice.bench.prompts import prompt_ids
from sluice.cli import main
from sluice.core.content import Content

WORKLOAD = ["--workload", "poisson", "--rate", "40", "--num-requests", "12", "--input-len",
            "24", "--output-len", "6", "--seed", "1"]


def run_json(argv: list[str], capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_prints_the_simulate_summary_and_its_twin(tmp_path, capsys):
    app, _runtime = tiny_app(tmp_path, step_log=str(tmp_path / "steps.jsonl"))
    with live(app) as srv:
        bench = run_json(["bench", "--base-url", srv.base_url, "--json", *WORKLOAD], capsys)
        assert main(["bench", "--base-url", srv.base_url, *WORKLOAD[:4], "--num-requests",
                     "2"]) == 0
        assert "Successful requests" in capsys.readouterr().out
        twin = run_json(["bench", "--base-url", srv.base_url, "--json", "--twin",
                         "--out", str(tmp_path / "twin"), *WORKLOAD], capsys)
        cal_file = tmp_path / "twin" / "twin-calibration.json"
        held_out = run_json(["bench", "--base-url", srv.base_url, "--json", "--twin",
                             "--twin-calibration", str(cal_file), *WORKLOAD[:-1], "2"], capsys)
    assert held_out["calibration"] == json.loads(cal_file.read_text()) == twin["calibration"]
    assert set(twin) == {"measured", "simulated", "simulated_engine", "calibration"}
    assert twin["simulated"]["completed"] == twin["measured"]["completed"] == 12
    assert twin["simulated"]["policy"] == "vllm"
    cal = twin["calibration"]
    assert cal["steps"] > 0 and cal["target"] == "period"
    fe = cal["frontend"]  # the server logged its requests: 12 + 2 + 12 streamed ones (the
    assert 12 <= fe["requests"] <= 26  # last lines may land after the client read the log)
    assert cal["transport"]["probes"] >= 1 and cal["transport"]["rtt_s"] > 0
    engine, sim = twin["simulated_engine"], twin["simulated"]
    t_in = (cal["transport"]["rtt_s"] + fe["loop_wait_s"] + fe["in_const_s"]
            + fe["in_per_token_s"] * 24)
    assert sim["mean_ttft_ms"] == pytest.approx(
        engine["mean_ttft_ms"] + 1e3 * (t_in + fe["out_first_s"]))
    assert sim["mean_e2el_ms"] == pytest.approx(
        engine["mean_e2el_ms"] + 1e3 * (t_in + fe["out_last_s"]))
    sim = run_json(["simulate", "--json", *WORKLOAD], capsys)
    assert set(bench) == set(sim)
    assert bench["completed"] == 12 and bench["rejected"] == 0
    assert bench["total_output_tokens"] == 12 * 6  # max_tokens with ignore_eos
    assert bench["total_input_tokens"] == 12 * 24
    assert bench["mean_ttft_ms"] > 0 and bench["mean_itl_ms"] > 0
    assert bench["policy"] == "vllm" and bench["model"] == "tiny"
    assert bench["kv_blocks_total"] == 256 and bench["steps"] > 0
    assert bench["max_model_len"] == 2048


def test_bench_records_rejections(capsys):
    app, _runtime = fake_app(fake_engine(max_num_seqs=1, delay=0.01), max_queue=1)
    with live(app) as srv:
        out = run_json(["bench", "--base-url", srv.base_url, "--json", "--workload", "constant",
                        "--rate", "200", "--num-requests", "10", "--input-len", "8",
                        "--output-len", "10"], capsys)
    assert out["rejected"] > 0 and out["completed"] + out["rejected"] == 10
    assert out["rejected_by_reason"] == {"http_429": out["rejected"]}
    assert out["steps"] is not None  # the fake server is a sluice server too


def test_twin_calibration_needs_twin(capsys):
    assert main(["bench", "--base-url", "http://127.0.0.1:9/v1", "--twin-calibration", "x.json",
                 *WORKLOAD]) == 2
    assert "--twin-calibration only makes sense with --twin" in capsys.readouterr().err


def test_unreachable_server_is_a_clean_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["bench", "--base-url", f"http://127.0.0.1:{port}/v1", *WORKLOAD]) == 2
    assert "cannot list models" in capsys.readouterr().err


def test_prompt_ids_keep_lengths_and_shared_prefixes():
    a = Content(segments=[(7, 40), (8, 10)])
    b = Content(segments=[(7, 40), (9, 5)])
    ia, ib = prompt_ids(a, 100, 250), prompt_ids(b, 100, 250)
    assert (len(ia), len(ib)) == (50, 45)
    assert ia[:40] == ib[:40] and ia[40:45] != ib[40:45]
    assert all(100 <= t < 250 for t in ia + ib)
    assert prompt_ids(Content(tokens=[1, 2, 300]), 100, 250) == [101, 102, 100 + 300 % 150]
