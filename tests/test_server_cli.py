"""``sluice serve`` flag handling: bad names and numbers are one clear line and exit code 2,
before any model is loaded."""

from __future__ import annotations

import pytest

from sluice.cli import main


@pytest.mark.parametrize("argv, words", [
    (["--model", "tiny", "--policy", "no-such-policy"], "unknown policy"),
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "tiny", "--max-queue", "0"], "--max-queue"),
    (["--model", "tiny", "--num-gpu-blocks", "0"], "--num-gpu-blocks"),
    (["--model", "tiny", "--threads", "0"], "--threads"),
])
def test_bad_serve_flags_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a NAME resolves under ./models: keep it out of the repo
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
