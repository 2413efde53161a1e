"""The ``Trace`` model: a named, re-iterable, streaming source of :class:`TraceRecord`.

Why a class around the parsers: the same trace is read several times (a pre-pass to measure its
rate for ``--rate``, then the replay; ``sluice compare`` replays it once per policy), each time
from the file, so memory stays constant in the trace length. Ordering is checked here once for
every schema: a timestamp that goes back in time stops the load unless ``sort=True`` (which
does hold the trace in memory, and says so) or the caller only wants it counted (stats).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sluice.errors import TraceError, unknown_name
from sluice.workload.trace_readers import (READERS, RowErrors, TraceRecord, generic_reader,
                                           open_text, sniff_format)

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "traces"


@dataclass(frozen=True, slots=True)
class BundledTrace:
    path: str  # relative to DATA_DIR
    fmt: str
    description: str


BUNDLED: dict[str, BundledTrace] = {
    "azure-conv": BundledTrace("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", "azure",
                               "Azure LLM inference 2023, conversation (19,366 requests, 1 h)"),
    "azure-code": BundledTrace("azure_llm_2023/AzureLLMInferenceTrace_code.csv", "azure",
                               "Azure LLM inference 2023, code (8,819 requests, 1 h)"),
    "mooncake-conv": BundledTrace("mooncake_fast25/conversation_trace.jsonl.gz", "mooncake",
                                  "Mooncake FAST'25 conversation, with 512-token hash_ids"),
    "mooncake-synth": BundledTrace("mooncake_fast25/synthetic_trace.jsonl.gz", "mooncake",
                                   "Mooncake FAST'25 synthetic (public datasets, Poisson)"),
    "sharegpt": BundledTrace("sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv.gz",
                             "lengths", "ShareGPT length pairs (Llama-2 tokenizer), no times"),
    "arxiv": BundledTrace(
        "arxiv_summ_lengths/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv.gz",
        "lengths", "arXiv summarization length pairs (Llama-2 tokenizer), no times"),
}
DEFAULT_TRACE = "azure-conv"


def parse_columns(spec: str) -> dict[str, str]:
    """``"arrival=ts,input=prompt,output=completion"`` -> role -> column name."""
    roles = {"arrival", "input", "output", "session", "user", "hash_ids"}
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        role, sep, col = part.partition("=")
        if not sep or role not in roles or not col:
            raise TraceError(f"bad --trace-columns entry {part!r}; expected ROLE=COLUMN with ROLE "
                             f"in {sorted(roles)}")
        out[role] = col
    return out


class Trace:
    """A trace file (bundled name or path) that can be streamed any number of times.

    After each full pass, ``skipped`` counts malformed rows skipped by reason,
    ``dropped`` rows that cannot be requests (zero tokens) and ``non_monotone`` timestamps
    that went back in time (only non-zero when ``check_order=False`` or ``sort=True``).
    """

    def __init__(self, source: str | Path, fmt: str | None = None, *,
                 columns: dict[str, str] | None = None, time_unit: str = "s",
                 skip_bad_rows: bool = False, sort: bool = False) -> None:
        self.name, self.path, bundled_fmt = resolve(source)
        if not self.path.is_file():
            raise TraceError(f"trace file not found: {self.path}")
        if columns:
            jsonl = ".jsonl" in self.path.name or ".json" in self.path.name
            self._reader = generic_reader(columns, time_unit, jsonl)
            self.fmt = "generic-jsonl" if jsonl else "generic-csv"
        else:
            self.fmt = fmt or bundled_fmt or sniff_format(self.path)
            if self.fmt not in READERS:
                raise unknown_name("trace format", self.fmt, list(READERS))
            self._reader = READERS[self.fmt]
        self.skip_bad_rows = skip_bad_rows
        self.sort = sort
        self.skipped: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.non_monotone = 0
        self.first_non_monotone: str | None = None

    @property
    def has_arrivals(self) -> bool:
        return self.fmt != "lengths"

    def records(self, check_order: bool = True) -> Iterator[TraceRecord]:
        """Stream the rows in file order (or sorted by arrival when ``sort`` was asked)."""
        if self.sort:
            rows = list(self._stream(check_order=False))
            rows.sort(key=lambda r: (r.arrival if r.arrival is not None else 0.0))
            return iter(rows)
        return self._stream(check_order)

    def _stream(self, check_order: bool) -> Iterator[TraceRecord]:
        errs = RowErrors(str(self.path), self.skip_bad_rows)
        self.non_monotone = 0
        self.first_non_monotone = None
        prev = float("-inf")
        with open_text(self.path) as f:
            for rec in self._reader(f, errs):
                if rec.arrival is not None:
                    if rec.arrival < prev:
                        self._out_of_order(rec, prev, check_order)
                    else:
                        prev = rec.arrival
                yield rec
        self.skipped = errs.skipped
        self.dropped = errs.dropped

    def _out_of_order(self, rec: TraceRecord, prev: float, check_order: bool) -> None:
        where = f"{self.path}:{rec.line}"
        if check_order:
            raise TraceError(f"{where}: timestamp goes back in time ({rec.arrival:.6f} s after "
                             f"{prev:.6f} s); pass --sort to sort the trace by arrival")
        self.non_monotone += 1
        if self.first_non_monotone is None:
            self.first_non_monotone = where


def resolve(source: str | Path) -> tuple[str, Path, str | None]:
    """Bundled name or file path -> (display name, path, known format or None)."""
    text = str(source)
    if text in BUNDLED:
        b = BUNDLED[text]
        return text, DATA_DIR / b.path, b.fmt
    path = Path(text).expanduser()
    if path.exists():
        return path.name, path, None
    if "/" not in text and "." not in text:
        raise unknown_name("trace", text, list(BUNDLED))
    raise TraceError(f"trace file not found: {path}")
