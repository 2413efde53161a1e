"""Per-request records: the timeline every metric is computed from (one row per request)."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sluice.core.request import Request


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
        slo = r.slo
        nan = float("nan")
        return cls(
            id=r.id, user=r.user, slo_class=r.slo_class, priority=r.priority,
            program=-1 if r.program is None else r.program, turn=r.turn, last_turn=r.last_turn,
            arrival=r.arrival, first_scheduled=r.first_scheduled, first_token=r.first_token,
            finish=r.finish_time, prompt_tokens=r.prompt_len, output_tokens=r.num_output,
            cached_tokens=r.cached_tokens, recomputed_tokens=r.recomputed_tokens,
            preemptions=r.preemptions, state=r.state.name.lower(), stop_reason=r.stop_reason,
            slo_ttft=slo.ttft if slo and slo.ttft else nan,
            slo_tpot=slo.tpot if slo and slo.tpot else nan,
            slo_deadline=slo.deadline if slo and slo.deadline else nan,
            weight=r.weight,
        )

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
