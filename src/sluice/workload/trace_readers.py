"""Row parsers for every supported trace schema, streaming one record at a time.

Why one parser per schema instead of a generic CSV reader with options: each public trace has
quirks (Azure wall-clock timestamps with 7 fractional digits, BurstGPT's optional v3 columns and
zero-token failures, Mooncake's millisecond offsets and 512-token ``hash_ids``) and the error for
a bad row must name the file, line, column and value. Every parser yields
:class:`TraceRecord` and holds O(1) state, so a 10 M-row file never sits in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Callable, Iterator

from sluice.errors import TraceError
from sluice.workload.trace_rows import (RowErrors, TraceRecord, csv_rows, lengths_or_none,
                                        open_text, parse_length, parse_wallclock)

__all__ = ["READERS", "RowErrors", "TraceRecord", "generic_reader", "open_text", "parse_length",
           "sniff_format"]


def read_azure(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
    """Azure LLM inference 2023/2024: ``TIMESTAMP, ContextTokens, GeneratedTokens``.

    Timestamps are wall clock; arrivals are made relative to the first row.
    """
    t0: float | None = None
    names = ("ContextTokens", "GeneratedTokens")
    for line, ix, row in csv_rows(f, errs, ["TIMESTAMP", *names]):
        ts_text = row[ix["TIMESTAMP"]]
        try:
            ts = parse_wallclock(ts_text)
        except (ValueError, IndexError):
            errs.bad(line, "TIMESTAMP", ts_text, "not a YYYY-MM-DD HH:MM:SS timestamp")
            continue
        lens = lengths_or_none(errs, line, names, (row[ix[names[0]]], row[ix[names[1]]]))
        if lens is None:
            continue
        if t0 is None:
            t0 = ts
        yield TraceRecord(ts - t0, lens[0], lens[1], line=line)


def read_burstgpt(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
    """BurstGPT v1/v2 (``Timestamp, Model, Request tokens, Response tokens, Total tokens,
    Log Type``) and v3 (adds ``Session ID, Elapsed time``). ``Timestamp`` is seconds from
    00:00 of day 1 and kept as is; ``Model`` becomes the user when no session is given."""
    names = ("Request tokens", "Response tokens")
    for line, ix, row in csv_rows(f, errs, ["Timestamp", *names]):
        ts_text = row[ix["Timestamp"]]
        try:
            ts = float(ts_text)
        except ValueError:
            errs.bad(line, "Timestamp", ts_text, "not a number of seconds")
            continue
        lens = lengths_or_none(errs, line, names, (row[ix[names[0]]], row[ix[names[1]]]))
        if lens is None:
            continue
        session = row[ix["Session ID"]] or None if "Session ID" in ix else None
        model = row[ix["Model"]] if "Model" in ix else None
        yield TraceRecord(ts, lens[0], lens[1], session=session, user=model, line=line)


def read_lengths(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
    """Length tables (Sarathi/Vidur ShareGPT and arXiv): ``num_prefill_tokens,
    num_decode_tokens, ...``; no timestamps."""
    names = ("num_prefill_tokens", "num_decode_tokens")
    for line, ix, row in csv_rows(f, errs, list(names)):
        lens = lengths_or_none(errs, line, names, (row[ix[names[0]]], row[ix[names[1]]]))
        if lens is not None:
            yield TraceRecord(None, lens[0], lens[1], line=line)


def _json_lines(f: IO[str], errs: RowErrors) -> Iterator[tuple[int, dict]]:
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            errs.bad(line, "<json>", text.strip()[:60], f"invalid JSON: {e.msg}")
            continue
        if not isinstance(obj, dict):
            errs.bad(line, "<json>", text.strip()[:60], "not a JSON object")
            continue
        yield line, obj


def _json_record(errs: RowErrors, line: int, obj: dict, fields: dict[str, str],
                 time_scale: float) -> TraceRecord | None:
    """Build a record from a JSON object with ``fields`` naming arrival/input/output/... keys."""
    for role in ("input", "output"):
        if fields[role] not in obj:
            errs.bad(line, fields[role], None, "missing field")
            return None
    lens = lengths_or_none(errs, line, (fields["input"], fields["output"]),
                    (str(obj[fields["input"]]), str(obj[fields["output"]])))
    if lens is None:
        return None
    arrival = None
    if fields.get("arrival"):
        value = obj.get(fields["arrival"])
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            errs.bad(line, fields["arrival"], value, "not a number")
            return None
        arrival = float(value) * time_scale
    hashes = obj.get(fields.get("hash_ids", ""), None)
    if hashes is not None:
        if not isinstance(hashes, list) or not all(isinstance(h, int) and h >= 0 for h in hashes):
            errs.bad(line, fields["hash_ids"], str(hashes)[:60], "not a list of ids >= 0")
            return None
    session = obj.get(fields.get("session", ""), None)
    user = obj.get(fields.get("user", ""), None)
    return TraceRecord(arrival, lens[0], lens[1], hash_ids=hashes,
                       session=None if session is None else str(session),
                       user=None if user is None else str(user), line=line,
                       block_size=int(obj.get("block_size", 512)))


MOONCAKE_FIELDS = {"arrival": "timestamp", "input": "input_length", "output": "output_length",
                   "hash_ids": "hash_ids"}
SLUICE_FIELDS = {"arrival": "arrival", "input": "input_len", "output": "output_len",
                 "hash_ids": "hash_ids", "session": "session", "user": "user"}


def read_mooncake(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
    """Mooncake FAST'25 JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``,
    ``hash_ids`` (512-token prefix blocks)."""
    for line, obj in _json_lines(f, errs):
        rec = _json_record(errs, line, obj, MOONCAKE_FIELDS, 1e-3)
        if rec is not None:
            yield rec


def read_sluice(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
    """sluice's own JSONL (what ``sluice trace convert`` writes): ``arrival`` (s, optional),
    ``input_len``, ``output_len``, optional ``hash_ids`` + ``block_size``, ``session``, ``user``."""
    for line, obj in _json_lines(f, errs):
        rec = _json_record(errs, line, obj, SLUICE_FIELDS, 1.0)
        if rec is not None:
            yield rec


TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def generic_reader(columns: dict[str, str], time_unit: str, jsonl: bool
                   ) -> Callable[[IO[str], RowErrors], Iterator[TraceRecord]]:
    """A reader for any CSV/JSONL given a column mapping (roles: arrival, input, output,
    session, user, hash_ids). ``time_unit`` is s/ms/us/ns or ``datetime`` (wall clock)."""
    if "input" not in columns or "output" not in columns:
        raise TraceError("a column mapping needs input=COL and output=COL")
    if time_unit not in TIME_UNITS and time_unit != "datetime":
        raise TraceError(f"unknown time unit {time_unit!r}; valid: s, ms, us, ns, datetime")

    def read_json(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
        scale = TIME_UNITS.get(time_unit, 1.0)
        for line, obj in _json_lines(f, errs):
            rec = _json_record(errs, line, obj, columns, scale)
            if rec is not None:
                yield rec

    def read_csv(f: IO[str], errs: RowErrors) -> Iterator[TraceRecord]:
        required = [columns[r] for r in ("arrival", "input", "output") if r in columns]
        names = (columns["input"], columns["output"])
        t0: float | None = None
        for line, ix, row in csv_rows(f, errs, required):
            arrival = None
            if "arrival" in columns:
                text = row[ix[columns["arrival"]]]
                try:
                    ts = parse_wallclock(text) if time_unit == "datetime" else \
                        float(text) * TIME_UNITS[time_unit]
                except (ValueError, IndexError):
                    errs.bad(line, columns["arrival"], text, f"not a time in {time_unit}")
                    continue
                if time_unit == "datetime":
                    t0 = ts if t0 is None else t0
                    ts -= t0
                arrival = ts
            lens = lengths_or_none(errs, line, names, (row[ix[names[0]]], row[ix[names[1]]]))
            if lens is None:
                continue
            get = (lambda role: row[ix[columns[role]]] or None if columns.get(role) in ix else None)
            yield TraceRecord(arrival, lens[0], lens[1], session=get("session"), user=get("user"),
                              line=line)

    return read_json if jsonl else read_csv


READERS: dict[str, Callable[[IO[str], RowErrors], Iterator[TraceRecord]]] = {
    "azure": read_azure,
    "burstgpt": read_burstgpt,
    "lengths": read_lengths,
    "mooncake": read_mooncake,
    "sluice": read_sluice,
}


def sniff_format(path: Path) -> str:
    """Guess the schema from the first line (header or first JSON object)."""
    with open_text(path) as f:
        first = f.readline()
    text = first.strip()
    if not text:
        raise TraceError(f"{path}: empty trace (no header or first row)")
    if text.startswith("{"):
        try:
            keys = set(json.loads(text))
        except json.JSONDecodeError as e:
            raise TraceError(f"{path}:1: invalid JSON: {e.msg}") from None
        if "input_length" in keys:
            return "mooncake"
        if "input_len" in keys:
            return "sluice"
        raise TraceError(f"{path}:1: unknown JSONL schema with keys {sorted(keys)}; "
                         "give --trace-columns arrival=..,input=..,output=..")
    header = {c.strip() for c in text.split(",")}
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= header:
        return "azure"
    if {"Timestamp", "Request tokens", "Response tokens"} <= header:
        return "burstgpt"
    if {"num_prefill_tokens", "num_decode_tokens"} <= header:
        return "lengths"
    raise TraceError(f"{path}:1: unknown CSV header {sorted(header)}; "
                     "give --trace-columns arrival=..,input=..,output=..")
