"""Terminal rendering of summaries (rich) - the human face of ``--json``'s numbers."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

ROWS = [
    ("Successful requests", "completed", "{:d}"),
    ("Rejected requests", "rejected", "{:d}"),
    ("Benchmark duration (s)", "duration", "{:.2f}"),
    ("Total input tokens", "total_input_tokens", "{:d}"),
    ("Total generated tokens", "total_output_tokens", "{:d}"),
    ("Request throughput (req/s)", "request_throughput", "{:.2f}"),
    ("Request goodput (req/s)", "request_goodput", "{:.2f}"),
    ("Output token throughput (tok/s)", "output_throughput", "{:.2f}"),
    ("Total token throughput (tok/s)", "total_token_throughput", "{:.2f}"),
    ("Mean TTFT (ms)", "mean_ttft_ms", "{:.2f}"),
    ("Median TTFT (ms)", "median_ttft_ms", "{:.2f}"),
    ("P90 TTFT (ms)", "p90_ttft_ms", "{:.2f}"),
    ("P99 TTFT (ms)", "p99_ttft_ms", "{:.2f}"),
    ("Mean TPOT (ms)", "mean_tpot_ms", "{:.2f}"),
    ("Median TPOT (ms)", "median_tpot_ms", "{:.2f}"),
    ("P90 TPOT (ms)", "p90_tpot_ms", "{:.2f}"),
    ("P99 TPOT (ms)", "p99_tpot_ms", "{:.2f}"),
    ("Mean ITL (ms)", "mean_itl_ms", "{:.2f}"),
    ("P99 ITL (ms)", "p99_itl_ms", "{:.2f}"),
    ("Mean E2EL (ms)", "mean_e2el_ms", "{:.2f}"),
    ("P90 E2EL (ms)", "p90_e2el_ms", "{:.2f}"),
    ("P99 E2EL (ms)", "p99_e2el_ms", "{:.2f}"),
    ("SLO attainment", "slo_attainment", "{:.1%}"),
    ("Jain fairness (tenants)", "jain_fairness", "{:.3f}"),
    ("Prefix cache hit rate", "prefix_hit_rate", "{:.1%}"),
    ("Preemptions", "preemptions", "{:d}"),
    ("KV blocks (total)", "kv_blocks_total", "{:d}"),
    ("KV mean utilization", "kv_mean_utilization", "{:.1%}"),
    ("Program JCT mean (s)", "mean_program_jct_s", "{:.2f}"),
    ("Program JCT p90 (s)", "p90_program_jct_s", "{:.2f}"),
]

COMPARE_COLS = [
    ("done", "completed", "{:d}"),
    ("rej", "rejected", "{:d}"),
    ("req/s", "request_throughput", "{:.2f}"),
    ("goodput", "request_goodput", "{:.2f}"),
    ("tok/s", "output_throughput", "{:.0f}"),
    ("TTFT mean", "mean_ttft_ms", "{:.1f}"),
    ("TTFT p99", "p99_ttft_ms", "{:.1f}"),
    ("TPOT mean", "mean_tpot_ms", "{:.2f}"),
    ("TPOT p99", "p99_tpot_ms", "{:.2f}"),
    ("E2E p90", "p90_e2el_ms", "{:.0f}"),
    ("SLO", "slo_attainment", "{:.1%}"),
    ("Jain", "jain_fairness", "{:.3f}"),
    ("hit", "prefix_hit_rate", "{:.1%}"),
    ("preempt", "preemptions", "{:d}"),
]


def fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def summary_table(summary: dict, title: str) -> Table:
    table = Table(show_header=False)
    table.caption = None
    table.sluice_title = title  # printed above the table: a title would wrap to its width
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, key, spec in ROWS:
        if key in summary and summary[key] is not None:
            table.add_row(label, fmt(summary[key], spec))
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        table.add_row("Rejected by reason", ", ".join(f"{k}={v}" for k, v in reasons.items()))
    return table


def compare_table(summaries: dict[str, dict], title: str) -> Table:
    cols = [c for c in COMPARE_COLS if any(s.get(c[1]) is not None for s in summaries.values())]
    table = Table()
    table.sluice_title = title
    table.add_column("policy")
    for label, _key, _spec in cols:
        table.add_column(label, justify="right")
    for name, s in summaries.items():
        table.add_row(name, *(fmt(s.get(key), spec) for _l, key, spec in cols))
    return table


def print_table(table: Table) -> None:
    console = Console()
    title = getattr(table, "sluice_title", None)
    if title:
        console.print(title, style="bold", highlight=False)
    console.print(table)
