"""``preempt_for`` victims: asked on a full batch too, and their planned work is given back."""

from sluice.core.request import RequestState
from sluice.policies.base import Policy
from sluice.sim.loop import SimLoop
from sluice.sim.runner import SimConfig, build_engine
from sluice.workload.base import ListWorkload
from conftest import LinearPerf, make_request


class EvictAll(Policy):
    """Any arrival with priority < 0 evicts every running request."""
    name = "test-evict"

    def key(self, req, now):
        return (req.priority, req.arrival, req.id)

    def preempt_for(self, req, view):
        return list(view.running) if req.priority < 0 else []


def test_full_batch_asks_preempt_for_and_unplans_the_victim():
    cfg = SimConfig(perf=LinearPerf(blocks=1000), max_num_seqs=1)
    engine = build_engine(cfg)
    engine.scheduler.policy = engine.policy = EvictAll()
    engine.scheduler._preempts = True
    low = make_request(0, 0.0, 64, 200, priority=0)
    high = make_request(1, 0.1, 64, 5, priority=-1)
    plans = []
    orig = engine.executor.execute

    def spy(plan):
        plans.append(([c.req.id for c in plan.chunks], [r.id for r in plan.decodes],
                      plan.stats.decode_seqs, plan.stats.prefill_seqs))
        return orig(plan)

    engine.executor.execute = spy
    ended = []
    SimLoop(engine, ListWorkload([low, high]), on_request_end=ended.append).run()
    assert low.preemptions == 1 and high.first_token < low.finish_time
    assert all(r.state == RequestState.FINISHED for r in ended) and len(ended) == 2
    # the step where `high` was admitted does not also carry the victim's decode
    step = next(p for p in plans if 1 in p[0])
    assert 0 not in step[1] and step[2] == len(step[1]) and step[3] == len(step[0])
    engine.kv.check([])
