"""Assemble a real replica: TorchExecutor + KVCache sized to its blocks + Scheduler + policy.

Why it mirrors ``sim.runner.build_engine``: the point of sluice is that the scheduler a user
chose in simulation is the one that serves, with the same policy defaults and the same
overrides. Only the executor (and where the KV capacity comes from) differs. torch is imported
lazily here so that importing the server package (CLI help, tests of the protocol) never
needs it.
"""

from __future__ import annotations

from collections import deque

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.core.config import SchedulerConfig
from sluice.core.engine import Engine
from sluice.core.kv import KVCache
from sluice.core.scheduler import Scheduler
from sluice.errors import ConfigError
from sluice.policies.base import make_policy

DEFAULT_GPU_BLOCKS = 1024


@dataclass
class ServeConfig:
    """What ``sluice serve`` flags set; ``None`` = the policy's or the model's default."""

    model: str = "tiny"
    policy: str = "vllm"
    policy_options: dict[str, Any] = field(default_factory=dict)
    served_model_name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    num_gpu_blocks: int = DEFAULT_GPU_BLOCKS
    block_size: int = 16
    num_host_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    preemption_mode: str | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    seed: int = 0
    step_log: str | None = None
    threads: int | None = None  # torch intra-op threads (None: torch's default)


@dataclass
class Deployment:
    """A ready engine plus what the HTTP layer needs to know about its model."""

    engine: Engine
    tokenizer: Any
    name: str
    model_dir: Path
    max_model_len: int
    policy: str = ""
    config: ServeConfig | None = None

    def describe(self) -> dict[str, Any]:
        """What ``GET /sluice/config`` reports: enough for ``sluice bench --twin`` to simulate
        this very deployment (same policy, scheduler knobs, KV size, model architecture)."""
        from dataclasses import asdict

        sched = self.engine.scheduler
        cfg = self.config or ServeConfig()
        return {"model": self.name, "model_config": str((self.model_dir / "config.json")
                                                        .resolve()),
                "policy": self.policy, "policy_options": dict(cfg.policy_options),
                "scheduler": asdict(sched.cfg), "num_gpu_blocks": self.engine.kv.num_blocks,
                "num_host_blocks": self.engine.kv.num_host_blocks, "device": cfg.device,
                "dtype": cfg.dtype, "threads": cfg.threads,
                "step_log": str(Path(cfg.step_log).resolve()) if cfg.step_log else None}


def resolve_model_dir(model: str) -> Path:
    """``model`` is a directory with ``config.json`` or a preparable name (``tiny``,
    ``smollm2-135m``) looked up under ``./models`` and prepared there if missing."""
    p = Path(model)
    if (p / "config.json").is_file():
        return p
    if p.exists():
        raise ConfigError(f"--model {model}: directory has no config.json")
    from sluice.executors.torch.prepare import prepare

    return prepare(model)  # unknown names raise a ConfigError listing the valid ones


def scheduler_config(cfg: ServeConfig, policy_defaults: dict[str, Any],
                     max_model_len: int) -> SchedulerConfig:
    """Policy defaults first, then the user's flags - the same precedence as simulation."""
    sc = SchedulerConfig(block_size=cfg.block_size, max_model_len=max_model_len)
    sc = sc.with_overrides(dict(policy_defaults))
    sc = sc.with_overrides({
        "max_num_seqs": cfg.max_num_seqs,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "preemption_mode": cfg.preemption_mode,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enable_chunked_prefill": cfg.enable_chunked_prefill,
    })
    if not sc.enable_chunked_prefill and cfg.max_num_batched_tokens is None:
        sc.max_num_batched_tokens = max(sc.max_num_batched_tokens, max_model_len)
    return sc.validate()


def build_deployment(cfg: ServeConfig) -> Deployment:
    """Load the model and build the engine; bad names and numbers raise ConfigError."""
    if cfg.num_gpu_blocks < 1:
        raise ConfigError(f"--num-gpu-blocks must be >= 1, got {cfg.num_gpu_blocks}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")
    policy = make_policy(cfg.policy, **cfg.policy_options)
    try:
        from sluice.executors.torch.executor import TorchExecutor
    except ImportError as exc:
        raise ConfigError(f"the real engine is not installed ({exc}); "
                          "pip install 'sluice[engine,serve]'") from None
    model_dir = resolve_model_dir(cfg.model)
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)

    preempt = cfg.preemption_mode or dict(policy.scheduler_defaults).get("preemption_mode")
    host_blocks = cfg.num_host_blocks
    if host_blocks is None:
        host_blocks = cfg.num_gpu_blocks if preempt == "swap" else 0
    executor = TorchExecutor(model_dir, device=cfg.device, dtype=cfg.dtype,
                             num_gpu_blocks=cfg.num_gpu_blocks, block_size=cfg.block_size,
                             num_host_blocks=host_blocks, seed=cfg.seed)
    max_len = min(cfg.max_model_len or executor.max_model_len, executor.max_model_len)
    sc = scheduler_config(cfg, policy.scheduler_defaults, max_len)
    kv = KVCache(cfg.num_gpu_blocks, cfg.block_size,
                 enable_prefix_caching=sc.enable_prefix_caching, watermark=sc.watermark,
                 num_host_blocks=host_blocks)
    engine = Engine(Scheduler(sc, policy, kv, num_layers=executor.num_layers), executor)
    engine.scheduler.itls = deque(maxlen=ITL_WINDOW)  # a server runs for days: stay bounded
    if executor.tokenizer is None:
        raise ConfigError(f"model directory {model_dir}: no tokenizer.json; the server needs it")
    name = cfg.served_model_name or _default_name(cfg.model, model_dir)
    return Deployment(engine, executor.tokenizer, name, model_dir, max_len, cfg.policy, cfg)


ITL_WINDOW = 100_000


def make_sampling(**kwargs: Any) -> Any:
    """The torch executor's SamplingParams (imported here so the app never imports torch)."""
    from sluice.executors.torch.sampling import SamplingParams

    return SamplingParams(**kwargs)


def build_app(dep: Deployment, max_queue: int = 1024, drain_timeout: float = 30.0):
    """FastAPI app + runtime for a deployment (the runtime starts with the app's lifespan)."""
    from sluice.server.app import create_app
    from sluice.server.intake import ModelInfo
    from sluice.server.metrics import ServerMetrics
    from sluice.server.runtime import EngineRuntime
    from sluice.server.servelog import ServeLog

    servelog = ServeLog(dep.config.step_log if dep.config else None)
    runtime = EngineRuntime(dep.engine, ServerMetrics(dep.name, dep.policy), max_queue=max_queue,
                            servelog=servelog)
    info = ModelInfo(dep.name, dep.tokenizer, dep.max_model_len, make_sampling)
    app = create_app(runtime, info, drain_timeout=drain_timeout, describe=dep.describe)
    return app, runtime


def _default_name(model: str, model_dir: Path) -> str:
    return model if not Path(model).exists() else model_dir.resolve().name
