"""BlockQueue behaves like a plain LRU list, whatever the mix of pushes, removals and pops."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.lru import BlockQueue

N = 12
ops = st.lists(st.tuples(st.sampled_from(["push", "remove", "pop", "pop_one"]),
                         st.integers(0, 10**6)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_matches_a_reference_list(script):
    q, model, outside = BlockQueue(N), [], list(range(N))
    for op, seed in script:
        rng = np.random.default_rng(seed)
        if op == "push" and outside:
            k = int(rng.integers(1, len(outside) + 1))
            picked = [outside.pop(int(rng.integers(len(outside)))) for _ in range(k)]
            q.push(np.array(picked, dtype=np.int64))
            model += picked
        elif op == "remove" and model:
            b = model.pop(int(rng.integers(len(model))))
            q.remove(np.array([b], dtype=np.int64))
            outside.append(b)
        elif op == "pop" and model:
            k = int(rng.integers(1, len(model) + 1))
            got = q.pop(k).tolist()
            assert got == model[:k]
            outside += model[:k]
            del model[:k]
        elif op == "pop_one" and model:
            b = model.pop(0)
            assert q.pop_one() == b
            outside.append(b)
        assert q.live().tolist() == model and len(q) == len(model)
        q.check()
