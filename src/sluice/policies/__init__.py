"""Scheduling policies. Importing this package registers every built-in policy.

To add one: write a small module here with a ``@register("name")`` Policy subclass and add
its import below. Nothing in the scheduler changes.
"""

from sluice.policies import fcfs  # noqa: F401
from sluice.policies import fair  # noqa: F401
from sluice.policies import priority  # noqa: F401
from sluice.policies import slo  # noqa: F401
from sluice.policies import admission  # noqa: F401
from sluice.policies import length  # noqa: F401
from sluice.policies import agent  # noqa: F401
from sluice.policies import continuum  # noqa: F401
from sluice.policies import thunderagent  # noqa: F401
from sluice.policies import kvflow  # noqa: F401
from sluice.policies import program_fair  # noqa: F401
