"""The real engine's executor: a Llama-family model over a paged KV cache, in PyTorch.

Only this package imports torch (DESIGN principle 4). Import the pieces from their modules
(``executor.TorchExecutor``, ``sampling.SamplingParams``, ``prepare.prepare``); this file stays
empty so that ``import sluice.executors.torch.cli`` does not load torch.
"""
