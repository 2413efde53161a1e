"""Agent programs, driven by a tiny stand-in for the simulator: turn k+1 arrives no earlier
than turn k's end plus its tool time, and its prompt starts with turn k's full context."""

from __future__ import annotations

import heapq

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.request import Request, RequestState
from sluice.errors import ConfigError
from sluice.workload.agent_presets import PRESETS
from sluice.workload.agents import AgentWorkload, agent_workload
from sluice.workload.synth import Poisson


def _tokens(content) -> list[tuple[int, int]]:
    """The virtual token sequence as (key, length) runs (segments are merged on equal keys)."""
    return [tuple(s) for s in content.segments]


def _starts_with(longer, shorter) -> bool:
    a, b = _tokens(longer), _tokens(shorter)
    if len(b) > len(a):
        return False
    return a[: len(b) - 1] == b[:-1] and a[len(b) - 1][0] == b[-1][0] and \
        a[len(b) - 1][1] >= b[-1][1]


def drive(w, service: float = 2.0, reject: set[int] | None = None):
    """Serve every request after ``service`` s, appending its output as the simulator does.

    Returns the requests in end order with their end times and the tool time each used.
    """
    heap: list[tuple[float, int, Request]] = []
    for r in w.requests():
        heapq.heappush(heap, (r.arrival + service, r.id, r))
    ended = []
    while heap:
        end, _, r = heapq.heappop(heap)
        if reject and r.id in reject:
            r.state = RequestState.REJECTED
        else:
            r.content.append_virtual(r.output_key, r.true_output)
            r.state = RequestState.FINISHED
        ended.append((r, end, r.content.copy()))
        for f in w.on_request_end(r, end):
            heapq.heappush(heap, (f.arrival + service, f.id, f))
    return ended


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_next_turn_waits_for_tool_and_extends_full_context(preset):
    w = agent_workload(preset, programs=20, arrivals=Poisson(1.0), seed=3)
    ended = drive(w)
    by_id = {r.id: (r, end, ctx) for r, end, ctx in ended}
    follow_ups = 0
    for r, _end, _ctx in ended:
        if r.turn == 0:
            continue
        prev, prev_end, prev_ctx = by_id[r.id - 1]
        assert prev.program == r.program and prev.turn == r.turn - 1
        from sluice.workload.agents import draw_plan
        plan = draw_plan(PRESETS[preset], r.program, 3, None)
        assert r.arrival >= prev_end + plan.tool_times[r.turn - 1] - 1e-9
        assert r.arrival >= prev_end
        # prompt = previous prompt + its whole output + tool output (+ user message)
        assert _starts_with(r.content, prev_ctx)
        assert r.prompt_len > prev_ctx.length or preset == "agent-chat"
        follow_ups += 1
    assert len({r.program for r, *_ in ended}) == 20
    if preset != "agent-chat":
        assert follow_ups > 0
    assert sum(r.last_turn for r, *_ in ended) == 20


def test_prefix_blocks_are_shared_between_turns():
    w = agent_workload("agent-coding", programs=1, arrivals=Poisson(1.0), seed=0)
    ended = drive(w)
    first, second = ended[0][0], ended[1][0]
    h1 = first.content.block_hashes(16, first.content.length)
    h2 = second.content.block_hashes(16, second.content.length)
    shared = len(h1)
    assert h2[:shared] == h1  # every full block of turn 0's context is reused by turn 1


def test_rejected_turn_ends_its_program():
    w = agent_workload("agent-coding", programs=1, arrivals=Poisson(1.0), seed=0)
    ended = drive(w, reject={1})  # the program's second turn is rejected
    assert [r.turn for r, *_ in ended] == [0, 1]
    assert w.ended == {"completed": 0, "failed": 1}


def test_closed_population_keeps_p_programs_running():
    w = agent_workload("agent-fc", programs=30, population=5, seed=1)
    first = list(w.requests())
    assert len(first) == 5 and all(0 <= r.arrival < 1 for r in first)
    w2 = agent_workload("agent-fc", programs=30, population=5, seed=1)
    ended = drive(w2)
    assert len({r.program for r, *_ in ended}) == 30
    assert w2.ended["completed"] == 30


def test_context_never_exceeds_max_model_len():
    w = agent_workload("agent-coding", programs=10, arrivals=Poisson(1.0), seed=5,
                       max_model_len=16_384)
    for r, *_ in drive(w):
        assert r.prompt_len + r.max_tokens <= 16_384 or r.turn == 0


def test_programs_do_not_depend_on_completion_order():
    a = [(r.id, r.prompt_len, r.max_tokens) for r, *_ in drive(
        agent_workload("agent-coding", programs=5, arrivals=Poisson(1.0), seed=9), service=1)]
    b = [(r.id, r.prompt_len, r.max_tokens) for r, *_ in drive(
        agent_workload("agent-coding", programs=5, arrivals=Poisson(1.0), seed=9), service=7)]
    assert sorted(a) == sorted(b)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), preset=st.sampled_from(sorted(PRESETS)))
def test_ids_unique_and_follow_ups_never_before_now(seed, preset):
    w = agent_workload(preset, programs=5, arrivals=Poisson(2.0), seed=seed)
    ended = drive(w, service=0.5)
    ids = [r.id for r, *_ in ended]
    assert len(ids) == len(set(ids))
    for r, end, _ in ended:
        assert end >= r.arrival


def test_bad_configuration():
    with pytest.raises(ConfigError, match="exactly one"):
        AgentWorkload(PRESETS["agent-fc"])
    with pytest.raises(ConfigError, match="unknown agent preset"):
        agent_workload("agent-nope", programs=1, arrivals=Poisson(1.0))
