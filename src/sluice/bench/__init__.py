"""``sluice bench``: replay any workload against an OpenAI-compatible endpoint (sluice, vLLM,
SGLang) and summarise it with the simulator's metrics (``client``, ``prompts``,
``server_stats``, ``cli``)."""
