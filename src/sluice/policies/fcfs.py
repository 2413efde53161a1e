"""Baselines: vLLM v1, Sarathi-Serve and Orca, as mechanism settings plus FCFS order.

* ``vllm`` (v1 scheduler): running requests first, then waiting FCFS; chunked prefill under an
  8192-token budget; the most recently admitted running request is the preemption victim;
  recompute preemption; prefix caching on.
* ``sarathi`` (Agrawal et al., OSDI'24): stall-free batching - decodes first, then prefill
  chunks under a small budget (512); KV for the whole prompt taken at admission.
* ``orca`` (Yu et al., OSDI'22): iteration-level scheduling without chunking - a prompt is
  prefilled whole in one step - and KV reserved for prompt + max_tokens at admission.
"""

from __future__ import annotations

from sluice.policies.base import Policy, register


@register("vllm")
class VLLM(Policy):
    scheduler_defaults = {"max_num_batched_tokens": 8192, "enable_chunked_prefill": True,
                          "enable_prefix_caching": True}


@register("sarathi")
class Sarathi(Policy):
    scheduler_defaults = {"max_num_batched_tokens": 512, "enable_chunked_prefill": True,
                          "decode_first": True, "kv_reservation": "prompt"}


@register("orca")
class Orca(Policy):
    scheduler_defaults = {"enable_chunked_prefill": False, "kv_reservation": "max",
                          "enable_prefix_caching": False}
