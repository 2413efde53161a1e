"""Incremental detokenization: stop strings spanning tokens are cut and never sent, partial
UTF-8 characters wait for their last byte, and text that might start a stop string is held
back only as long as it might."""

from __future__ import annotations

from test_server_helpers import ByteTokenizer

from sluice.server.textstream import TextStream


def feed(ts: TextStream, text: str) -> list[str]:
    return [ts.push([b]) for b in text.encode()]


def test_stop_string_across_tokens_is_cut():
    ts = TextStream(ByteTokenizer(), stops=("END",))
    pieces = feed(ts, "abc ENDxyz")
    assert "".join(pieces) + ts.finish() == "abc "
    assert ts.stopped


def test_possible_stop_prefix_is_held_then_released():
    ts = TextStream(ByteTokenizer(), stops=("END",))
    assert feed(ts, "aE") == ["a", ""]  # "E" may start "END"
    assert ts.push(list(b"x")) == "Ex"  # it did not
    assert ts.finish() == ""


def test_multibyte_character_waits_for_all_bytes():
    ts = TextStream(ByteTokenizer())
    pieces = feed(ts, "é!")
    assert pieces == ["", "é", "!"]


def test_finish_releases_held_text_without_stop():
    ts = TextStream(ByteTokenizer(), stops=("STOP",))
    assert "".join(feed(ts, "go ST")) == "go "
    assert ts.finish() == "ST"
