"""The hash that names a configuration (runs, evaluations, imported reference runs)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def config_hash(payload: Mapping[str, Any] | Sequence[Any]) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as canonical JSON (keys sorted at every
    level, tuples as lists): equal configurations hash equal whatever their key order. A
    list is hashed the same way (a shard set's fingerprint hashes its days' records)."""
    return hashlib.sha256(json.dumps(_canonical(payload), sort_keys=True).encode()).hexdigest()[:16]
