"""Trace loaders and ``trace stats``: published figures of the bundled traces, every schema,
and bad input (malformed rows, negative lengths, empty files, out-of-order timestamps)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.errors import ConfigError, TraceError
from sluice.workload.stats import trace_stats
from sluice.workload.traces import BUNDLED, Trace, parse_columns

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def stats() -> dict[str, dict]:
    return {name: trace_stats(Trace(name)) for name in BUNDLED}


@pytest.mark.parametrize("name,rows", [("azure-conv", 19_366), ("azure-code", 8_819),
                                       ("mooncake-conv", 12_031), ("mooncake-synth", 3_993),
                                       ("sharegpt", 30_731), ("arxiv", 28_257)])
def test_bundled_row_counts_are_exact(stats, name, rows):
    assert stats[name]["rows"] == rows
    assert stats[name]["skipped_rows"] == {} and stats[name]["dropped_rows"] == {}
    assert stats[name]["non_monotone_timestamps"] == 0


def test_mooncake_reuse_ceiling_matches_published(stats):
    assert stats["mooncake-conv"]["prefix_reuse_ceiling"] == pytest.approx(0.366, abs=0.001)
    assert stats["mooncake-synth"]["prefix_reuse_ceiling"] == pytest.approx(0.64, abs=0.001)
    assert stats["azure-conv"]["prefix_reuse_ceiling"] == 0.0


def test_published_lengths_and_burstiness(stats):
    # Mooncake README: mean input 12,035 / output 343 (conv), 15,325 / 149 (synthetic).
    assert round(stats["mooncake-conv"]["input_tokens"]["mean"]) == 12_035
    assert round(stats["mooncake-conv"]["output_tokens"]["mean"]) == 343
    assert round(stats["mooncake-synth"]["input_tokens"]["mean"]) == 15_325
    assert round(stats["mooncake-synth"]["output_tokens"]["mean"]) == 149
    # Azure 2023: p50 1,020 in / 129 out (conv), 1,469 / 13 (code); IAT CV 1.09 vs 13.
    assert stats["azure-conv"]["input_tokens"]["p50"] == 1020
    assert stats["azure-conv"]["output_tokens"]["p50"] == 129
    assert stats["azure-code"]["input_tokens"]["p50"] == 1469
    assert stats["azure-code"]["output_tokens"]["p50"] == 13
    assert stats["azure-conv"]["iat_cv"] == pytest.approx(1.09, abs=0.01)
    assert stats["azure-code"]["iat_cv"] == pytest.approx(13.15, abs=0.01)
    assert stats["sharegpt"]["input_tokens"]["p50"] == 1730
    assert stats["arxiv"]["input_tokens"]["p50"] == 2730
    assert "span_s" not in stats["sharegpt"]


def test_mooncake_turn_chains_are_recovered(stats):
    chains = stats["mooncake-conv"]["chains"]
    assert chains["roots"] + chains["follow_ups"] == 12_031
    assert 1.3 < chains["mean_requests_per_chain"] < 1.7 and chains["max_depth"] >= 10


def test_azure_timestamps_are_relative_and_precise():
    recs = list(Trace(FIX / "azure_unsorted.csv").records(check_order=False))
    assert recs[0].arrival == 0.0
    assert recs[1].arrival == pytest.approx(4.3145790, abs=1e-6)


def test_burstgpt_v1_schema_drops_failures_and_keeps_models():
    t = Trace(FIX / "burstgpt_v1_sample.csv")
    recs = list(t.records())
    assert t.fmt == "burstgpt"
    assert [r.arrival for r in recs] == [5, 118, 118, 149, 160]
    assert t.dropped == {"zero output tokens (failed request)": 1}
    assert recs[1].user == "GPT-4" and recs[1].input_len == 417 and recs[1].output_len == 217


def test_burstgpt_v3_sessions_become_chains():
    s = trace_stats(Trace(FIX / "burstgpt_v3_sample.csv"))
    assert s["rows"] == 5
    assert s["sessions"] == {"count": 2, "mean_turns": 2.0, "max_turns": 3}


def test_malformed_row_names_file_line_column_value():
    with pytest.raises(TraceError) as e:
        list(Trace(FIX / "burstgpt_bad_row.csv").records())
    msg = str(e.value)
    assert "burstgpt_bad_row.csv:3" in msg and "'Request tokens'" in msg and "'abc'" in msg


def test_skip_bad_rows_counts_by_reason():
    t = Trace(FIX / "burstgpt_bad_row.csv", skip_bad_rows=True)
    assert [r.input_len for r in t.records()] == [472, 100]
    assert t.skipped == {"not a token count": 1, "negative length": 1}


def test_bad_json_line_is_reported():
    with pytest.raises(TraceError, match=r"mooncake_bad.jsonl:2: .*invalid JSON"):
        list(Trace(FIX / "mooncake_bad.jsonl").records())


def test_non_monotone_timestamps_stop_unless_sorted():
    with pytest.raises(TraceError, match=r"azure_unsorted.csv:4: timestamp goes back.*--sort"):
        list(Trace(FIX / "azure_unsorted.csv").records())
    t = Trace(FIX / "azure_unsorted.csv", sort=True)
    arrivals = [r.arrival for r in t.records()]
    assert arrivals == sorted(arrivals) and len(arrivals) == 4
    assert trace_stats(Trace(FIX / "azure_unsorted.csv"))["non_monotone_timestamps"] == 1


def test_empty_trace_has_zero_rows():
    s = trace_stats(Trace(FIX / "azure_empty.csv"))
    assert s["rows"] == 0 and s["input_tokens"] == {}


def test_generic_columns_mapping():
    t = Trace(FIX / "generic_sample.csv",
              columns=parse_columns("arrival=ts_ms,input=prompt,output=completion,user=tenant"),
              time_unit="ms")
    recs = list(t.records())
    assert [r.arrival for r in recs] == [0.0, 0.25, 1.0]
    assert [r.user for r in recs] == ["alice", "bob", "alice"]


def test_unknown_name_and_missing_file():
    with pytest.raises(ConfigError, match="azure-conv"):
        Trace("no-such-trace")
    with pytest.raises(TraceError, match="not found"):
        Trace("/nonexistent/trace.csv")
    with pytest.raises(TraceError, match="ROLE=COLUMN"):
        parse_columns("arrival")


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.sampled_from(["12", "0", "007", "3", " 12", "+3", "12.0", "1.5", "-1", "x",
                                    "\u0663", "", "1_000"])] * 2))
def test_token_counts_read_alike_on_the_fast_and_the_general_path(values):
    """Plain digit strings skip the general parser; both paths agree on every value: the
    same lengths, the same drops of zero-token rows, the same errors for bad ones."""
    from sluice.workload.trace_rows import RowErrors, lengths_or_none, parse_length

    def general(vals):
        out = []
        for v in vals:
            try:
                out.append(parse_length(v))
            except (ValueError, TypeError):
                return "bad"
        return None if 0 in out else tuple(out)

    errs = RowErrors("t.csv", skip=True)
    got = lengths_or_none(errs, 2, ("in", "out"), values)
    want = general(values)
    assert (got if got is not None else ("bad" if errs.skipped else None)) == want
