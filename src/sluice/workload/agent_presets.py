"""Agent program presets, each parameter with where it comes from (see docs/workloads.md).

Why presets and not a trace: no public agent trace with tool gaps could be obtained (Mooncake's
tool-agent trace and Continuum's SWE-bench timings are not public here), so the presets encode
published characterisations. Lengths are lognormal (mean, CV) in tokens, times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentPreset:
    name: str
    description: str
    system_len: int  # shared system prompt / tool schemas, identical across programs
    system_variants: int  # distinct system prompts (e.g. API sets); programs pick one
    task_mean: float  # first user message (issue text, question)
    task_cv: float
    turns_mean: float  # LLM calls per program
    turns_cv: float
    turns_min: int
    turns_max: int
    output_mean: float  # tokens generated per call
    output_cv: float
    tool_tokens_mean: float  # tool output appended after each call; 0 = none
    tool_tokens_cv: float
    tool_time_mean: float  # seconds the tool (or the user, for chat) takes
    tool_time_cv: float
    user_mean: float = 0.0  # extra user message per turn (chat); 0 = none
    user_cv: float = 1.0
    tools: tuple[str, ...] = ("tool",)
    max_output: int = 8192
    max_piece: int = 32768


PRESETS: dict[str, AgentPreset] = {
    # SWE-bench-like coding agent (SWE-agent / OpenHands / Claude Code style loop).
    # "Tens of turns", contexts growing to tens of thousands of tokens: 3k system + 1.2k issue
    # + 30 turns x ~(120 out + 700 tool) = ~29k tokens at the end. Input:output per call in
    # the hundreds (mean context ~16k / 120 out). Tool time: AgentCgroup (Zheng et al. 2026,
    # 144 SWE-rebench tasks) measured tool + container time at 56-74% of end-to-end latency;
    # a 5 s mean tool time against ~2 s of LLM time per call (prefix-cached prefill of the
    # ~1k new tokens + 120 decode steps at ~15 ms) gives ~70%. Heavy tail (CV 1.5): test runs.
    "agent-coding": AgentPreset(
        "agent-coding", "SWE-bench-like coding agent: tens of turns, long growing context",
        system_len=3000, system_variants=1, task_mean=1200, task_cv=0.8,
        turns_mean=30, turns_cv=0.6, turns_min=5, turns_max=150,
        output_mean=120, output_cv=0.8, tool_tokens_mean=700, tool_tokens_cv=1.5,
        tool_time_mean=5.0, tool_time_cv=1.5,
        tools=("bash", "edit", "view", "search", "test")),
    # BFCL-like function calling: a function-doc system prompt per API set (16 sets shared
    # across programs), a short query, 2-4 calls (a function-call JSON of ~40 tokens, then the
    # final answer), short tool results from fast APIs (0.5 s mean).
    "agent-fc": AgentPreset(
        "agent-fc", "BFCL-like function calling: few turns, short tools",
        system_len=1500, system_variants=16, task_mean=120, task_cv=0.5,
        turns_mean=2.5, turns_cv=0.4, turns_min=2, turns_max=6,
        output_mean=40, output_cv=0.5, tool_tokens_mean=200, tool_tokens_cv=1.0,
        tool_time_mean=0.5, tool_time_cv=1.0, tools=("api_call",)),
    # Multi-turn chat with the chain statistics recovered from Mooncake's conversation trace
    # (`sluice trace stats mooncake-conv`): 8,056 chains, 1.49 requests per chain, max 43;
    # gap between turns median 126 s / mean 216 s (think time, no tool); new user message per
    # turn median 26 / mean 1,302 tokens (pastes: heavy tail); output mean 343 tokens; one
    # shared 512-token system block (Mooncake block 0); first prompt mean 12k tokens.
    "agent-chat": AgentPreset(
        "agent-chat", "multi-turn chat, think time between turns (Mooncake chains)",
        system_len=512, system_variants=1, task_mean=11500, task_cv=1.3,
        turns_mean=1.49, turns_cv=1.0, turns_min=1, turns_max=43,
        output_mean=343, output_cv=0.6, tool_tokens_mean=0, tool_tokens_cv=1.0,
        tool_time_mean=216.0, tool_time_cv=1.2, user_mean=1302, user_cv=8.0,
        tools=("user",)),
}
