"""lcron: multi-stage cascade ranking (LCRON and seven baselines), end to end.

The library holds all logic; the KFP components in ``components/`` only adapt it.
"""

__version__ = "0.1.0"

from lcron.logs import get_logger as _get_logger

_get_logger()  # the ``lcron`` logger writes to stderr unless configured otherwise (lcron.logs)

from lcron.cpu_quota import limit_thread_pools as _limit_thread_pools

# Thread pools sized to the container's CPU quota, before torch is loaded (lcron.cpu_quota).
_limit_thread_pools()
