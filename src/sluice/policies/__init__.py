"""Scheduling policies. Importing this package registers every built-in policy.

To add one: write a small module here with a ``@register("name")`` Policy subclass and add
its import below. Nothing in the scheduler changes.
"""

from sluice.policies import fcfs  # noqa: F401
