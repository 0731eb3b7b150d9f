"""Read a JSON document with errors that name the file (writing is :func:`lcron.atomic.write_json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The document at ``path``; a missing file or invalid JSON is a DataError naming ``what`` and the path."""
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # invalid JSON, not UTF-8, or nested beyond parsing
        raise DataError(f"{what} {path} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{what} {path} is not a JSON object (it holds a {type(doc).__name__})")
    return doc
