"""Helpers for the server and bench tests: a live uvicorn server on loopback, a deterministic
fake executor (runtime tests that must not depend on model numerics) and a byte tokenizer.

Kept as a module (not conftest) so the tests say explicitly what they use."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from sluice.core.config import SchedulerConfig
from sluice.core.engine import Engine
from sluice.core.kv import KVCache
from sluice.core.plan import StepPlan, StepResult
from sluice.core.scheduler import Scheduler
from sluice.policies.base import make_policy

EOS = 0


class ByteTokenizer:
    """id == byte value (ids 1..255), 0 is EOS; enough for text in/out without a model."""

    vocab_size = 256
    eos_token_ids = frozenset({EOS})

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i != EOS).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class FakeSampling:
    """Stands in for the torch SamplingParams: keeps what the fake executor reads."""

    def __init__(self, stop: tuple[str, ...] = (), ignore_eos: bool = False, **_: Any) -> None:
        self.stop = tuple(stop)
        self.ignore_eos = ignore_eos


def fake_token(tokens: list[int]) -> int:
    """Next token: a lowercase letter that depends on the position and the last token."""
    return 97 + (len(tokens) * 7 + tokens[-1]) % 26


class FakeExecutor:
    """Deterministic tokens, optional per-step delay, and a poison user that makes a step fail
    (to show that one failing batch does not stop the server)."""

    def __init__(self, delay: float = 0.0, poison_user: str = "boom") -> None:
        self.delay = delay
        self.poison_user = poison_user
        self.interrupt = threading.Event()
        self.released: set[int] = set()
        self.tok = ByteTokenizer()

    def release(self, req_id: int) -> None:
        self.released.add(req_id)

    def execute(self, plan: StepPlan) -> StepResult:
        if self.delay:
            time.sleep(self.delay)
        sampled: dict[int, list[int]] = {}
        finished: set[int] = set()
        for c in plan.all_chunks():
            req = c.req
            if req.user == self.poison_user:
                raise RuntimeError("poisoned request in the batch")
            if c.start + c.n_tokens != req.num_tokens:
                continue  # a prefill chunk that does not complete the prompt samples nothing
            t = fake_token(req.content.tokens)
            sampled[req.id] = [t]
            sp = req.sampling
            if sp is not None and sp.stop:
                out = req.content.tokens[req.prompt_len:] + [t]
                if any(s in self.tok.decode(out) for s in sp.stop):
                    finished.add(req.id)
        return StepResult(self.delay, sampled=sampled, finished=finished)


def fake_engine(num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8,
                delay: float = 0.0, policy: str = "vllm") -> Engine:
    pol = make_policy(policy)
    cfg = SchedulerConfig(block_size=block_size, max_model_len=512, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=64).with_overrides(dict(pol.scheduler_defaults))
    kv = KVCache(num_blocks, block_size)
    return Engine(Scheduler(cfg, pol, kv), FakeExecutor(delay))


def fake_app(engine: Engine, max_queue: int = 1024, name: str = "fake"):
    from sluice.server.app import create_app
    from sluice.server.intake import ModelInfo
    from sluice.server.metrics import ServerMetrics
    from sluice.server.runtime import EngineRuntime

    runtime = EngineRuntime(engine, ServerMetrics(name), max_queue=max_queue)
    info = ModelInfo(name, ByteTokenizer(), engine.scheduler.cfg.max_model_len, FakeSampling)
    return create_app(runtime, info, drain_timeout=10.0), runtime


class LiveServer:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                                    timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@contextmanager
def live(app: Any) -> Iterator[LiveServer]:
    srv = LiveServer(app).start()
    try:
        yield srv
    finally:
        srv.stop()


def wait_idle(runtime: Any, timeout: float = 20.0) -> None:
    """Until the engine has no work and no request is pending (the engine thread says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runtime.call(lambda e: not e.has_work) and not runtime._busy():
            return
        time.sleep(0.02)
    raise AssertionError("engine still busy")


def assert_kv_empty(runtime: Any) -> None:
    """No block owned by anyone: only free or cached (reusable prefix) blocks remain."""

    def check(engine: Engine) -> int:
        engine.kv.check([])
        return engine.kv.num_used

    assert runtime.call(check) == 0


def tiny_app(tmp_dir: Any, max_queue: int = 1024, **overrides: Any):
    """The tiny random Llama behind the real server stack (prepared into ``tmp_dir``)."""
    from sluice.executors.torch.prepare import prepare
    from sluice.server.engine_factory import ServeConfig, build_app, build_deployment

    model_dir = prepare("tiny", tmp_dir)
    opts = {"num_gpu_blocks": 256, "block_size": 16, "max_num_seqs": 32, **overrides}
    dep = build_deployment(ServeConfig(model=str(model_dir), served_model_name="tiny", **opts))
    return build_app(dep, max_queue=max_queue, drain_timeout=10.0)



async def consume_stream(stream, leave_after: int | None) -> tuple[str, int | None, bool]:
    """Read a streamed completion; hang up after ``leave_after`` chunks if given.
    Returns (text, usage completion tokens or None, whether the client left early)."""
    text, usage, chunks = "", None, 0
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        if leave_after is not None and chunks >= leave_after:
            await stream.close()
            return text, usage, True
    return text, usage, False
