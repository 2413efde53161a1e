"""User-facing errors. The CLI turns any of these into one clear line and exit code 2.

Raise them with a message that names the thing (file, line, field, option) and what was
expected; never let a user see a traceback for bad input.
"""


class SluiceError(Exception):
    """Base of every error caused by bad input or an impossible configuration."""


class ConfigError(SluiceError):
    """Unknown name (policy, model, GPU, option) or an impossible configuration."""


class TraceError(SluiceError):
    """A malformed trace or workload file; the message says file:line, field and value."""


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> ConfigError:
    """The error for an unknown ``kind`` called ``name``, listing the valid ones."""
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
