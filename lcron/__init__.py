"""lcron: multi-stage cascade ranking (LCRON and seven baselines), end to end.

The library holds all logic; the KFP components in ``components/`` only adapt it.
"""

__version__ = "0.1.0"
