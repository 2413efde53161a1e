"""Token-id prompts for a workload request, sent to any OpenAI-compatible ``/v1/completions``.

Why token ids and not text: traces give lengths (Azure) or block hashes (Mooncake), and the
benchmark must send exactly that many prompt tokens and keep the prefix sharing the trace
implies. Token-id prompts (accepted by vLLM, SGLang and sluice) give both: virtual token
``(segment key, offset)`` maps to a fixed id in ``[lo, hi)``, so two requests sharing a
segment prefix send identical id prefixes, whatever the model's tokenizer. The default range
avoids the low ids where tokenizers keep special tokens.
"""

from __future__ import annotations

import numpy as np

from sluice.core.content import Content
from sluice.errors import ConfigError

DEFAULT_RANGE = (100, 250)  # valid in every vocabulary we serve, the tiny test model's too
_A = np.uint64(0x9E3779B97F4A7C15)
_B = np.uint64(0xBF58476D1CE4E5B9)
_C = np.uint64(0x94D049BB133111EB)


def parse_range(text: str) -> tuple[int, int]:
    """``LO:HI`` -> (lo, hi) with 0 <= lo < hi."""
    lo, sep, hi = text.partition(":")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"--token-range {text!r}: expected LO:HI token ids") from None
    if not sep or not 0 <= a < b:
        raise ConfigError(f"--token-range {text!r}: need 0 <= LO < HI")
    return a, b


def prompt_ids(content: Content, lo: int, hi: int) -> list[int]:
    """The ids standing for ``content``'s tokens (real ids are folded into the range)."""
    span = hi - lo
    if content.tokens is not None:
        return [lo + t % span for t in content.tokens]
    parts = [_segment_ids(key, n, lo, span) for key, n in content.segments]
    return np.concatenate(parts).tolist() if parts else []


def _segment_ids(key: int, n: int, lo: int, span: int) -> np.ndarray:
    """A splitmix-style hash of (key, offset): the same segment always maps the same way."""
    with np.errstate(over="ignore"):
        x = np.uint64(key & 0xFFFF_FFFF_FFFF_FFFF) * _A + np.arange(n, dtype=np.uint64) * _B
        x ^= x >> np.uint64(31)
        x *= _C
        x ^= x >> np.uint64(29)
    return (x % np.uint64(span)).astype(np.int64) + lo
