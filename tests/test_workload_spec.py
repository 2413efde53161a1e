"""The shared workload flags: defaults, replay semantics, transforms and their reports."""

from __future__ import annotations

import argparse

import pytest

from sluice.errors import ConfigError
from sluice.workload.replay import record_content
from sluice.workload.spec import add_workload_args, build_workload
from sluice.workload.trace_readers import TraceRecord


def _build(*argv: str, max_model_len: int | None = None):
    p = argparse.ArgumentParser()
    add_workload_args(p)
    return build_workload(p.parse_args(list(argv)), max_model_len=max_model_len)


def _reqs(*argv: str, **kw):
    return list(_build(*argv, **kw).requests())


def test_default_is_azure_conv_replayed_as_is():
    reqs = _reqs()
    assert len(reqs) == 19_366
    assert reqs[0].arrival == 0.0 and reqs[0].prompt_len == 374
    assert reqs[0].max_tokens == 44 and reqs[0].true_output == 44
    assert len({r.id for r in reqs}) == len(reqs)
    assert all(b.arrival >= a.arrival for a, b in zip(reqs, reqs[1:]))
    keys = {r.content.segments[0][0] for r in reqs}
    assert len(keys) == len(reqs) and min(keys) > 0  # private prompts, positive keys


def test_replay_is_deterministic_and_re_iterable():
    w = _build("--trace", "azure-code", "--num-requests", "500", "--tenants", "zipf:8",
               "--sample", "0.5")
    a = [(r.id, r.arrival, r.prompt_len, r.user) for r in w.requests()]
    b = [(r.id, r.arrival, r.prompt_len, r.user) for r in w.requests()]
    assert a == b and len(a) == 500


def test_rate_and_rate_scale():
    reqs = _reqs("--num-requests", "1000", "--rate", "20")
    assert (len(reqs) - 1) / (reqs[-1].arrival - reqs[0].arrival) == pytest.approx(20.0)
    base = _reqs("--num-requests", "100")
    scaled = _reqs("--num-requests", "100", "--rate-scale", "4")
    assert scaled[-1].arrival == pytest.approx(base[-1].arrival / 4)


def test_max_tokens_cap_keeps_true_output_below_cap():
    reqs = _reqs("--num-requests", "200", "--max-tokens", "100")
    assert all(r.max_tokens == 100 for r in reqs)
    assert all(r.true_output <= 100 for r in reqs)
    assert any(r.true_output < 100 for r in reqs)


def test_long_requests_reach_the_simulator_unless_filtered():
    assert max(r.prompt_len for r in _reqs("--trace", "mooncake-conv")) > 100_000
    w = _build("--trace", "mooncake-conv", "--max-context", "model", max_model_len=32_768)
    reqs = list(w.requests())
    assert all(r.prompt_len + r.max_tokens <= 32_768 for r in reqs)
    (reason, counts), = w.report.as_dict().items()
    assert "32768" in reason and counts["rows"] == 12_031 - len(reqs) > 0


def test_mooncake_blocks_share_prefixes_at_any_block_size():
    a = record_content(TraceRecord(0.0, 1100, 5, hash_ids=[7, 8, 9]), 0)
    b = record_content(TraceRecord(1.0, 1300, 5, hash_ids=[7, 8, 10]), 1)
    assert a.segments == [[8, 512], [9, 512], [10, 76]]
    for bs in (16, 512):
        ha, hb = a.block_hashes(bs, a.length), b.block_hashes(bs, b.length)
        common = 1024 // bs
        assert ha[:common] == hb[:common]
        if len(ha) > common:
            assert ha[common] != hb[common]  # the third block differs (ids 9 vs 10)


def test_length_only_trace_gets_poisson_arrivals_or_burst():
    burst = _reqs("--trace", "sharegpt", "--num-requests", "50")
    assert {r.arrival for r in burst} == {0.0}
    reqs = _reqs("--trace", "sharegpt", "--num-requests", "5000", "--rate", "10")
    assert len(reqs) / reqs[-1].arrival == pytest.approx(10, rel=0.05)


def test_time_window_tenants_and_slo_classes():
    reqs = _reqs("--time-window", "600:1200", "--tenants", "round-robin:3",
                 "--slo", "ttft=2,tpot=100ms",
                 "--slo-class", "long,ttft=10,priority=1,when=input>=4096")
    assert reqs[0].arrival >= 0 and reqs[-1].arrival < 600
    assert [r.user for r in reqs[:4]] == ["t0", "t1", "t2", "t0"]
    long_ = [r for r in reqs if r.prompt_len >= 4096]
    assert long_ and all(r.slo_class == "long" and r.priority == 1 and r.slo.ttft == 10
                         for r in long_)
    short = [r for r in reqs if r.prompt_len < 4096]
    assert all(r.slo_class == "default" and r.slo.tpot == pytest.approx(0.1) for r in short)


def test_synthetic_and_agent_workloads_from_flags():
    g = _reqs("--workload", "gamma", "--rate", "5", "--cv", "2", "--num-requests", "300",
              "--input-len", "lognormal:800:1", "--output-len", "fixed:64")
    assert len(g) == 300 and {r.max_tokens for r in g} == {64}
    e = _reqs("--workload", "poisson", "--rate", "5", "--duration", "10")
    assert all(r.arrival < 10 for r in e)
    a = _reqs("--workload", "agent-coding", "--num-requests", "7", "--rate", "1")
    assert len(a) == 7 and all(r.turn == 0 and r.program is not None for r in a)


@pytest.mark.parametrize("argv,match", [
    (["--workload", "nope"], "unknown workload"),
    (["--trace", "no-such"], "unknown trace"),
    (["--rate", "-1"], "--rate"),
    (["--max-context", "model"], "context length is not known"),
    (["--tenants", "zipf"], "bad --tenants"),
    (["--slo", "ttft=fast"], "bad SLO"),
    (["--time-window", "10:5"], "time-window"),
    (["--workload", "gamma", "--input-len", "10"], "both --input-len"),
])
def test_bad_flags_raise_config_errors(argv, match):
    with pytest.raises(ConfigError, match=match):
        _reqs(*argv)
