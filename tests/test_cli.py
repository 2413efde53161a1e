"""The CLI contract (DESIGN §5): JSON keys, exit codes, clear messages for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sluice.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json_is_one_object_with_documented_keys(capsys):
    code, out, _err = run_cli(["simulate", "--num-requests", "300", "--json",
                               "--goodput", "ttft:500", "tpot:50"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["completed"] == 300
    for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p90_itl_ms", "median_e2el_ms",
                "request_throughput", "output_throughput", "request_goodput"):
        assert summary[key] is not None
    documented = DOCS.read_text()
    missing = [k for k in summary if f"`{k}`" not in documented]
    assert missing == [], f"keys not documented in docs/cli.md: {missing}"


def test_same_seed_same_json(capsys):
    args = ["simulate", "--workload", "poisson", "--rate", "5", "--num-requests", "200",
            "--seed", "3", "--json"]
    a = run_cli(args, capsys)[1]
    b = run_cli(args, capsys)[1]
    c = run_cli(args[:-3] + ["--seed", "4", "--json"], capsys)[1]
    assert a == b and a != c


def test_compare_one_row_per_policy(capsys):
    code, out, _ = run_cli(["compare", "--policies", "vllm,sarathi,orca", "--num-requests",
                            "200", "--json"], capsys)
    assert code == 0
    data = json.loads(out)["policies"]
    assert sorted(data) == ["orca", "sarathi", "vllm"]
    assert all(s["completed"] == 200 for s in data.values())


@pytest.mark.parametrize("args, needle", [
    (["simulate", "--policy", "nope"], "unknown policy 'nope'; valid:"),
    (["simulate", "--model", "nope"], "unknown model 'nope'"),
    (["simulate", "--gpu", "nope"], "unknown GPU 'nope'"),
    (["simulate", "--model", "llama-3.1-70b", "--gpu", "rtx-4090"], "does not fit"),
    (["simulate", "--goodput", "ttft:x"], "is not a number"),
    (["simulate", "--max-model-len", "100000000"], "max_model_len"),
    (["compare", "--policies", "vllm,bogus"], "unknown policy 'bogus'"),
    (["simulate", "--policy-opt", "novalue"], "expected [POLICY:]KEY=VALUE"),
])
def test_bad_input_exits_2_with_a_clear_message(args, needle, capsys):
    code, _out, err = run_cli(args + ["--num-requests", "5"], capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


def test_malformed_trace_row_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0,abc,3\n")
    code, _out, err = run_cli(["simulate", "--trace", str(bad)], capsys)
    assert code == 2
    assert f"{bad}:3" in err and "ContextTokens" in err and "'abc'" in err


def test_over_long_requests_are_rejected_not_dropped(capsys):
    code, out, _ = run_cli(["simulate", "--num-requests", "300", "--max-model-len", "1024",
                            "--json"], capsys)
    s = json.loads(out)
    assert code == 0
    assert s["rejected"] > 0 and s["completed"] + s["rejected"] == 300
    assert s["rejected_by_reason"]["context"] == s["rejected"]


def test_out_dir_writes_per_request_csv(tmp_path, capsys):
    code, _out, _ = run_cli(["simulate", "--num-requests", "50", "--out", str(tmp_path),
                             "--json"], capsys)
    assert code == 0
    lines = (tmp_path / "requests.csv").read_text().splitlines()
    assert len(lines) == 51 and "ttft_s" in lines[0]
    assert json.loads((tmp_path / "summary.json").read_text())["completed"] == 50


def test_config_file_sets_defaults_and_flags_win(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("policy: sarathi\nnum_requests: 40\n")
    s = json.loads(run_cli(["simulate", "--config", str(cfg), "--json"], capsys)[1])
    assert s["policy"] == "sarathi" and s["completed"] == 40
    s = json.loads(run_cli(["simulate", "--config", str(cfg), "--policy", "vllm", "--json"],
                           capsys)[1])
    assert s["policy"] == "vllm"
    bad = tmp_path / "bad.yaml"
    bad.write_text("polcy: vllm\n")
    code, _o, err = run_cli(["simulate", "--config", str(bad)], capsys)
    assert code == 2 and "unknown key" in err


def test_entry_point_runs_as_a_program():
    proc = subprocess.run([sys.executable, "-m", "sluice.cli", "simulate", "--num-requests",
                           "20", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["completed"] == 20


def test_agent_summary_keys_are_documented(capsys):
    code, out, _ = run_cli(["simulate", "--workload", "agent-coding", "--num-requests", "4",
                            "--rate", "0.2", "--policy", "continuum", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["programs_completed"] == 4 and summary["mean_program_jct_s"] > 0
    documented = DOCS.read_text()
    assert [k for k in summary if f"`{k}`" not in documented] == []


def test_scoped_policy_options_reach_only_their_policy(capsys):
    base = ["compare", "--policies", "vllm,jitserve", "--num-requests", "60",
            "--slo", "ttft=1,tpot=100ms", "--json"]
    code, _o, err = run_cli(base + ["--policy-opt", "quantile=0.5"], capsys)
    assert code == 2 and "vllm" in err  # unscoped: vllm refuses an option it lacks
    code, out, _ = run_cli(base + ["--policy-opt", "jitserve:quantile=0.5"], capsys)
    assert code == 0 and sorted(json.loads(out)["policies"]) == ["jitserve", "vllm"]
