"""Per-request records: the timeline every metric is computed from (one row per request)."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sluice.core.request import Request, RequestState


_NAN = float("nan")
_STATE_NAMES = {s: s.name.lower() for s in RequestState}


@dataclass(slots=True)
class RequestRecord:
    id: int
    user: str
    slo_class: str
    priority: int
    program: int
    turn: int
    last_turn: bool
    arrival: float
    first_scheduled: float
    first_token: float
    finish: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    recomputed_tokens: int
    preemptions: int
    state: str
    stop_reason: str
    slo_ttft: float
    slo_tpot: float
    slo_deadline: float
    weight: float

    @classmethod
    def of(cls, r: Request) -> "RequestRecord":
        """Positional, in field order: one record per simulated request, so it is hot."""
        slo = r.slo
        if slo is None:
            ttft = tpot = deadline = _NAN
        else:
            ttft = slo.ttft or _NAN
            tpot = slo.tpot or _NAN
            deadline = slo.deadline or _NAN
        return cls(
            r.id, r.user, r.slo_class, r.priority, -1 if r.program is None else r.program,
            r.turn, r.last_turn, r.arrival, r.first_scheduled, r.first_token, r.finish_time,
            r.prompt_len, r.num_output, r.cached_tokens, r.recomputed_tokens, r.preemptions,
            _STATE_NAMES[r.state], r.stop_reason, ttft, tpot, deadline, r.weight)

    @property
    def completed(self) -> bool:
        return self.state == "finished"

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2el(self) -> float:
        return self.finish - self.arrival

    @property
    def tpot(self) -> float:
        """vLLM bench: (latency - ttft) / (output_tokens - 1); undefined for one token."""
        if self.output_tokens <= 1:
            return float("nan")
        return (self.finish - self.first_token) / (self.output_tokens - 1)


def write_csv(records: list[RequestRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(RequestRecord)]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=names + ["ttft_s", "tpot_s", "e2el_s"])
        w.writeheader()
        for rec in records:
            row = asdict(rec)
            row.update(ttft_s=rec.ttft, tpot_s=rec.tpot, e2el_s=rec.e2el)
            w.writerow(row)
