"""`sluice perf ...` through the real CLI entry point: JSON on stdout, exit code 2 on bad input."""

from __future__ import annotations

import json

from sluice.cli import main


def test_calibrate_json_and_errors(tmp_path, capsys) -> None:
    from test_perf_calibrate import _log

    f, _ = _log(tmp_path)
    out = tmp_path / "cal.json"
    assert main(["perf", "calibrate", "--from", str(f), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "sluice-calibration/1" and out.is_file()
    assert main(["perf", "calibrate", "--from", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_perf_subcommands_exist(capsys) -> None:
    for sub in ("validate", "fit", "calibrate"):
        try:
            main(["perf", sub, "--help"])
        except SystemExit as e:
            assert e.code == 0
    assert "--json" in capsys.readouterr().out


def test_unknown_gpu_through_simulate_is_one_line(capsys) -> None:
    code = main(["simulate", "--gpu", "h1000", "--num-requests", "2", "--json"])
    assert code == 2
    err = capsys.readouterr().err
    assert "h100" in err and "Traceback" not in err
