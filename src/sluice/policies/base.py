"""The Policy protocol and the registry (DESIGN §3).

A policy *decides*; the scheduler *does*. Every decision has a default that reproduces vLLM v1
(FCFS, running first, victim = most recently admitted), so a policy overrides only what its
paper changes. Baseline policies also carry ``scheduler_defaults``: the mechanism knobs their
system used (token budget, chunking, KV reservation), which the user may still override.

Composition (``a+b+c``): see :mod:`sluice.policies.compose`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from sluice.core.request import Request
from sluice.errors import ConfigError, unknown_name


@dataclass(slots=True)
class View:
    """Read-only snapshot handed to policies. Lists are the scheduler's own: do not mutate."""

    now: float
    free_blocks: int
    total_blocks: int
    block_size: int
    running: list[Request]
    waiting: list[Request]
    host_free_blocks: int
    programs: dict[int, Any]
    num_layers: int = 1


class Policy:
    """Base policy = vLLM v1 behaviour. Subclasses override what they change.

    Class attributes tell the mechanism how the policy behaves, so the scheduler can stay fast:

    * ``static_key``: ``key`` never changes while a request waits (FCFS, priority): the waiting
      queue is kept sorted instead of re-sorted every step.
    * ``order_running``: also order the running batch by ``key`` each step (budget goes to the
      most urgent first; the last in order is the default preemption victim).
    * ``skip_blocked``: when a waiting request cannot be admitted, try the next (else stop, as
      vLLM's strict FCFS does).
    * ``fast_forward_safe``: decisions cannot change during a decode-only stretch with nothing
      waiting, so the simulator may jump over it (the policy's ``on_decode_run`` is then told).
    * ``pins_yield_to_waiting``: a waiting request may reclaim pins to be admitted (else only
      a running request's growth reclaims them, and a waiting one waits for expiry).
    """

    name: ClassVar[str] = "base"
    static_key: ClassVar[bool] = True
    order_running: ClassVar[bool] = False
    skip_blocked: ClassVar[bool] = False
    fast_forward_safe: ClassVar[bool] = True
    pins_yield_to_waiting: ClassVar[bool] = True
    scheduler_defaults: ClassVar[dict[str, Any]] = {}
    interruptible_prefill: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"policy {self.name!r} takes no options, got {sorted(options)}")

    # -- decisions ------------------------------------------------------------------------
    def key(self, req: Request, now: float) -> tuple:
        """Lower runs first; among running, the highest key is the first preemption victim."""
        return (req.arrival, req.id)

    def admit(self, req: Request, view: View) -> bool:
        return True

    def preempt_for(self, req: Request, view: View) -> list[Request]:
        """Running requests to evict so that waiting ``req`` can run now (default: none).
        Asked when ``req`` lacks KV blocks or a seat in a full batch (``max_num_seqs``);
        victims already given work in this step are not evicted."""
        return []

    def victim(self, running: list[Request], view: View) -> Request:
        """Which running request to preempt when the KV cache is short."""
        return max(running, key=lambda r: r.admitted_seq)

    def retain(self, req: Request, view: View) -> float | None:
        """On finish: seconds to pin the request's KV, or None for normal LRU caching."""
        return None

    def reclaim_key(self, pin: Any, view: View) -> tuple:
        """Order in which pins are released under memory pressure (lowest first). Default:
        soonest expiry first. KVFlow/ThunderAgent rank by when the program returns."""
        return (pin.expiry, pin.id)

    def prefill_layers(self, req: Request, view: View) -> int | None:
        """Layers of ``req``'s prefill chunk to run this step (Layered Prefill); None = all.
        The chunk resumes from there on a later step, so decodes can run in between."""
        return None

    def next_wakeup(self, view: View) -> float | None:
        """A time at which this policy's decisions change with no event (a batching window
        closing, aging): the simulator plans a step then. None = only on events."""
        return None

    def interrupt_for(self, req: Request, view: View) -> bool:
        """May an arrival cut an interruptible prefill step at the next layer boundary?"""
        return True

    # -- bookkeeping ----------------------------------------------------------------------
    def on_arrival(self, req: Request, view: View) -> None:
        pass

    def on_admit(self, req: Request, view: View) -> None:
        """A waiting request starts (or resumes) running."""

    def on_step(self, served: list[tuple[Request, int]], view: View) -> None:
        """After each step: (request, tokens computed) pairs."""

    def on_decode_run(self, reqs: list[Request], k: int, view: View) -> None:
        """After a fast-forwarded run of ``k`` decode steps over ``reqs``."""

    def on_finish(self, req: Request, view: View) -> None:
        pass


PolicyFactory = Callable[..., Policy]
_REGISTRY: dict[str, type[Policy]] = {}


def register(name: str) -> Callable[[type[Policy]], type[Policy]]:
    """Class decorator: ``@register("vtc")`` makes the policy available by name."""

    def deco(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY:
            raise ValueError(f"policy {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the package imports every policy module, which registers them.
    import sluice.policies  # noqa: F401


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_policy_class(name: str) -> type[Policy]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name("policy", name, list(_REGISTRY)) from None


def make_policy(spec: str, **options: Any) -> Policy:
    """``spec`` is a registered name or a composition ``a+b`` (see compose.py)."""
    _load_builtin()
    if "+" in spec:
        from sluice.policies.compose import compose

        return compose(spec, **options)
    return get_policy_class(spec)(**options)
