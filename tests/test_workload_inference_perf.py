"""inference-perf profiles: stages, shared-prefix groups, and multi-turn context growth."""

from __future__ import annotations

import pytest

from sluice.core.request import RequestState
from sluice.errors import ConfigError
from sluice.workload.inference_perf import load_profile
from sluice.workload.tenancy import Decorator

PROFILE = """
load:
  type: constant
  stages:
    - rate: 10
      duration: 10
    - rate: 20
      duration: 5
data:
  type: shared_prefix
  shared_prefix:
    num_unique_system_prompts: 3
    num_users_per_system_prompt: 4
    system_prompt_len: 100
    question_len: 50
    output_len: 30
    enable_multi_turn_chat: {multi}
"""


def _profile(tmp_path, multi: bool):
    path = tmp_path / "profile.yaml"
    path.write_text(PROFILE.format(multi=str(multi).lower()))
    return load_profile(path, seed=1, decorator=Decorator())


def test_single_turn_stages_and_prompt_reuse(tmp_path):
    w = _profile(tmp_path, multi=False)
    reqs = list(w.requests())
    assert len(reqs) == 10 * 10 + 20 * 5
    assert reqs[1].arrival - reqs[0].arrival == pytest.approx(0.1)
    assert reqs[-1].arrival - reqs[-2].arrival == pytest.approx(0.05)
    assert all(r.prompt_len == 150 and r.max_tokens == 30 for r in reqs)
    systems = {r.content.segments[0][0] for r in reqs}
    assert len(systems) == 3  # G shared system prompts
    assert len({tuple(map(tuple, r.content.segments)) for r in reqs}) == 12  # N prompts cycle
    assert [r.content.segments for r in reqs[:12]] == [r.content.segments for r in reqs[12:24]]


def test_multi_turn_context_grows_by_question_and_output(tmp_path):
    w = _profile(tmp_path, multi=True)
    first = list(w.requests())
    assert len(first) == 12 and all(r.prompt_len == 150 for r in first)
    r0 = first[0]
    r0.content.append_virtual(r0.output_key, r0.true_output)
    r0.state = RequestState.FINISHED
    (nxt,) = w.on_request_end(r0, now=50.0)
    assert nxt.id == 12 and nxt.turn == 1 and nxt.program == r0.program
    assert nxt.arrival == 50.0  # scheduled at 1.2 s but the session was busy
    assert nxt.prompt_len == 150 + 30 + 50
    assert [tuple(s) for s in nxt.content.segments[:2]] == \
        [tuple(s) for s in r0.content.segments[:2]]


def test_bad_profiles(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("load: {type: concurrent, stages: [{rate: 1, duration: 1}]}\n"
                   "data: {type: shared_prefix, shared_prefix: {}}\n")
    with pytest.raises(ConfigError, match="load.type"):
        load_profile(bad)
    bad.write_text("data: {type: random}\n")
    with pytest.raises(ConfigError, match="shared_prefix"):
        load_profile(bad)
