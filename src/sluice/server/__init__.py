"""The real-engine server: OpenAI-compatible HTTP API over the same scheduler as simulation.

``app`` (routes), ``runtime`` (engine thread on the wall clock), ``intake`` (body -> Request),
``responses`` (OpenAI shapes), ``textstream`` (detokenization, stop strings), ``metrics``
(Prometheus), ``engine_factory`` (TorchExecutor + KVCache + Scheduler), ``cli`` (`sluice serve`).
"""
