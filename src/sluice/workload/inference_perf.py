"""The workload of an inference-perf profile (kubernetes-sigs/inference-perf, the llm-d
benchmarking tool): ``load.stages`` and the ``shared_prefix`` data generator.

Semantics, as read in inference-perf's public source (``datagen/shared_prefix_datagen.py``,
``apis/user_session.py``, ``config`` aliases), re-implemented here on virtual content:

* ``num_unique_system_prompts`` (alias ``num_groups``) G system prompts of
  ``system_prompt_len`` tokens; ``num_users_per_system_prompt`` (``num_prompts_per_group``) P
  questions per group, ``question_len`` tokens each; ``output_len`` is ``max_tokens``. Lengths
  are ints or distributions ``{mean, std_dev, min, max}``. N = G * P.
* Single turn: prompt = system(g) + question; the N prompts are shuffled once and request k
  sends prompt k mod N, so after N requests every prompt repeats (full prefix hits).
* Multi-turn chat: N user sessions, each starting with its group's system prompt as context,
  shuffled once; request k is round k div N of session k mod N and sends context + question;
  afterwards the session context becomes that prompt + the response, so context grows by
  question + output each round. A session's rounds never overlap (inference-perf holds a
  per-session lock): round r+1 arrives at max(its scheduled time, round r's end).
* Arrivals: ``load.type`` constant (1/rate spacing) or poisson, stage after stage, rate x
  duration requests per stage. ``ignore_eos`` (api or shared_prefix) only documents intent:
  the simulated output is always ``output_len`` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sluice.core.content import Content
from sluice.core.request import Request, RequestState
from sluice.errors import ConfigError
from sluice.workload.keys import MINT_BASE
from sluice.workload.synth import Stages
from sluice.workload.tenancy import Decorator

SYS_BASE = MINT_BASE + (1 << 39)
Q_BASE = MINT_BASE + (1 << 38)


def _lengths(spec: Any, n: int, rng: np.random.Generator, what: str) -> list[int]:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec < 1:
            raise ConfigError(f"inference-perf {what} must be >= 1, got {spec}")
        return [int(spec)] * n
    if isinstance(spec, dict) and "mean" in spec:
        lo, hi = int(spec.get("min", 1)), int(spec.get("max", 1 << 20))
        x = rng.normal(float(spec["mean"]), float(spec.get("std_dev", 0.0)), n)
        return np.clip(np.rint(x), max(lo, 1), hi).astype(np.int64).tolist()
    raise ConfigError(f"inference-perf {what}: expected an int or {{mean, std_dev, min, max}}, "
                      f"got {spec!r}")


@dataclass(slots=True)
class SharedPrefixWorkload:
    groups: int
    per_group: int
    system_len: int
    question_lens: list[int]
    output_lens: list[int]
    times: list[float]
    multi_turn: bool
    seed: int = 0
    decorator: Decorator = field(default_factory=Decorator)
    name: str = "inference-perf"
    _perm: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 20])
        self._perm = rng.permutation(self.groups * self.per_group).tolist()

    @property
    def n(self) -> int:
        return self.groups * self.per_group

    def requests(self) -> Iterator[Request]:
        first = self.times if not self.multi_turn else self.times[: self.n]
        for k, t in enumerate(first):
            if self.multi_turn:
                session = self._perm[k]
                content = Content(segments=[(SYS_BASE + session // self.per_group,
                                             self.system_len)])
            else:
                prompt = self._perm[k % self.n]
                content = Content(segments=[(SYS_BASE + prompt // self.per_group,
                                             self.system_len)])
            yield self._request(k, t, content)

    def on_request_end(self, req: Request, now: float) -> list[Request]:
        if not self.multi_turn or req.state != RequestState.FINISHED:
            return []
        k = req.id + self.n
        if k >= len(self.times):
            return []
        return [self._request(k, max(self.times[k], now), req.content.copy())]

    def _request(self, k: int, t: float, content: Content) -> Request:
        i = k % self.n  # question (multi-turn: of session perm[i]); output index as upstream
        if not self.multi_turn:
            i = self._perm[i]
        content.append_virtual(Q_BASE + i, self.question_lens[i])
        out = self.output_lens[k % self.n]
        req = Request(k, t, content, out, true_output=out,
                      program=(k % self.n) if self.multi_turn else None,
                      turn=k // self.n if self.multi_turn else 0,
                      last_turn=not self.multi_turn or k + self.n >= len(self.times))
        if self.decorator.active:
            self.decorator.apply(req, k % self.n, None, np.random.default_rng([self.seed, 21, k]))
        return req


def load_profile(path: str | Path, seed: int = 0, decorator: Decorator | None = None,
                 num_requests: int | None = None) -> SharedPrefixWorkload:
    """Read an inference-perf profile (YAML or JSON) into a workload."""
    text = Path(path).read_text()
    try:
        if str(path).endswith(".json"):
            cfg = json.loads(text)
        else:
            import yaml
            cfg = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"{path}: not a valid profile: {e}") from None
    return from_profile(cfg, seed, decorator or Decorator(), num_requests, str(path))


def from_profile(cfg: dict, seed: int, decorator: Decorator, num_requests: int | None,
                 where: str = "profile") -> SharedPrefixWorkload:
    data = (cfg or {}).get("data") or {}
    sp = data.get("shared_prefix")
    if data.get("type", "shared_prefix") != "shared_prefix" or not isinstance(sp, dict):
        raise ConfigError(f"{where}: only data.type shared_prefix with a data.shared_prefix "
                          "section is supported")
    load = cfg.get("load") or {}
    kind = load.get("type", "constant")
    stages = load.get("stages")
    if kind not in ("constant", "poisson") or not stages:
        raise ConfigError(f"{where}: load.type must be constant or poisson with load.stages")
    try:
        st = tuple((float(s["rate"]), float(s["duration"])) for s in stages)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: each load.stages entry needs rate and duration") from None
    g = int(sp.get("num_unique_system_prompts", sp.get("num_groups", 10)))
    p = int(sp.get("num_users_per_system_prompt", sp.get("num_prompts_per_group", 10)))
    if g < 1 or p < 1:
        raise ConfigError(f"{where}: shared_prefix group counts must be >= 1")
    rng = np.random.default_rng([seed, 22])
    times = list(Stages(st, kind).times(np.random.default_rng([seed, 2])))
    if num_requests is not None:
        times = times[:num_requests]
    sys_len = _lengths(sp.get("system_prompt_len", 100), 1, rng, "system_prompt_len")[0]
    return SharedPrefixWorkload(
        groups=g, per_group=p, system_len=sys_len,
        question_lens=_lengths(sp.get("question_len", 50), g * p, rng, "question_len"),
        output_lens=_lengths(sp.get("output_len", 50), g * p, rng, "output_len"),
        times=times, multi_turn=bool(sp.get("enable_multi_turn_chat", False)), seed=seed,
        decorator=decorator)

