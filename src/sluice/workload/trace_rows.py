"""Trace rows and the parsing helpers every schema shares.

Why separate from the schema readers: the record type, the bad-row policy (raise with
file:line, column and value, or count when skipping) and the token-count and timestamp parsers
are the contract; each schema reader in :mod:`trace_readers` is then a short loop.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gzip
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from sluice.errors import TraceError


@dataclass(slots=True)
class TraceRecord:
    """One request of a trace, before it becomes a :class:`~sluice.core.request.Request`.

    ``arrival`` is seconds from the trace start, or ``None`` when the trace has lengths only
    (ShareGPT/arXiv tables): an arrival process then supplies the times.
    """

    arrival: float | None
    input_len: int
    output_len: int
    hash_ids: list[int] | None = None
    session: str | None = None
    user: str | None = None
    line: int = 0
    block_size: int = 512


class RowErrors:
    """Raises on a malformed row, or counts it by reason when skipping is asked for.

    ``dropped`` counts rows that are well-formed but cannot become a request (zero prompt or
    zero output tokens: BurstGPT marks failed calls with ``Response tokens = 0``); they are
    always dropped, never an error, and always reported.
    """

    def __init__(self, path: str, skip: bool) -> None:
        self.path = path
        self.skip = skip
        self.skipped: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def bad(self, line: int, column: str, value: object, reason: str) -> None:
        if self.skip:
            self.skipped[reason] += 1
            return
        raise TraceError(f"{self.path}:{line}: column {column!r}: bad value {value!r} ({reason}); "
                         "pass --skip-bad-rows to skip such rows")

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


def open_text(path: Path) -> IO[str]:
    """Open a plain or gzip text file (by magic bytes, not by name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def parse_length(text: str) -> int:
    """A token count: an int (``"12"``, ``"12.0"``) that is >= 0, else ValueError."""
    try:
        n = int(text)
    except ValueError:
        f = float(text)
        if not f.is_integer():
            raise ValueError("not an integer") from None
        n = int(f)
    if n < 0:
        raise ValueError("negative length")
    return n


_DATE_CACHE: dict[str, int] = {}
_EPOCH_DAY = _dt.date(2000, 1, 1).toordinal()  # a near epoch keeps float64 at ~0.1 us


def parse_wallclock(text: str) -> float:
    """Seconds since 2000-01-01 for ``YYYY-MM-DD HH:MM:SS[.fffffff][+HH:MM]`` (Azure).

    Hand-parsed because ``datetime.fromisoformat`` rejects Azure's 7 fractional digits on
    Python 3.11, and a cached date ordinal keeps the 10 M-row path cheap.
    """
    date, _, clock = text.strip().replace("T", " ").partition(" ")
    day = _DATE_CACHE.get(date)
    if day is None:
        day = _dt.date.fromisoformat(date).toordinal() - _EPOCH_DAY
        _DATE_CACHE[date] = day
    offset = 0.0
    for sign in ("+", "-"):
        if sign in clock:
            clock, _, tz = clock.partition(sign)
            hh, _, mm = tz.partition(":")
            offset = (int(hh) * 3600 + int(mm or 0) * 60) * (1 if sign == "+" else -1)
    if clock.endswith("Z"):
        clock = clock[:-1]
    h, m, s = clock.split(":")
    return day * 86400.0 + int(h) * 3600 + int(m) * 60 + float(s) - offset


def lengths_or_none(errs: RowErrors, line: int, names: tuple[str, str], values: tuple[str, str]
             ) -> tuple[int, int] | None:
    """Parse (input, output) lengths; report bad ones; drop zero-length rows."""
    a, b = values
    # plain digits (which int() reads alike), every row of a clean CSV: no loop, no try
    if type(a) is str and type(b) is str and a.isdecimal() and b.isdecimal():
        n_in, n_out = int(a), int(b)
        if n_in and n_out:
            return n_in, n_out
    out = []
    for name, value in zip(names, values):
        try:
            out.append(parse_length(value))
        except (ValueError, TypeError) as e:
            errs.bad(line, name, value, str(e) if "negative" in str(e) else "not a token count")
            return None
    if out[0] == 0:
        errs.drop("zero input tokens")
        return None
    if out[1] == 0:
        errs.drop("zero output tokens (failed request)")
        return None
    return out[0], out[1]


def csv_rows(f: IO[str], errs: RowErrors, required: list[str]
              ) -> Iterator[tuple[int, dict[str, int], list[str]]]:
    """Yield (line, column index, row) of a headed CSV, checking the header and row width."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [c for c in required if c not in index]
    if missing:
        raise TraceError(f"{errs.path}:1: missing column(s) {missing}; header is {header}")
    width = len(header)
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            errs.bad(reader.line_num, "<row>", ",".join(row), f"{len(row)} fields, expected {width}")
            continue
        yield reader.line_num, index, row

