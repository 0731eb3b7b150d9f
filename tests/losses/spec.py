"""The spec's list of the eight methods (``../shared/spec/METHODS.md`` section 5), as registry names.

Tests that check the paper's methods exactly use this list; tests of properties every
method must have use the registry (``lcron.losses.METHODS``), so a ninth method is tested
too and breaks nothing. A missing spec file gives an empty list here and a failure in
``test_registry.test_the_spec_lists_eight_methods`` (not a silent skip).
"""

from __future__ import annotations

import re
from pathlib import Path

SPEC_FILE = Path(__file__).resolve().parents[2].parent / "shared/spec/METHODS.md"

_SECTION = re.compile(r"^## 5\. .*?$(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)
_ITEM = re.compile(r"^\d+\.\s+\*\*([^*]+)\*\*", re.MULTILINE)


def spec_methods(path: Path = SPEC_FILE) -> tuple[str, ...]:
    """The numbered methods of section 5 in the spec's order, as registry names ("FS-RankNet" ->
    "fs_ranknet", "ARF-v2" -> "arf_v2"); empty when the file is missing."""
    if not path.is_file():
        return ()
    section = _SECTION.search(path.read_text(encoding="utf-8"))
    if section is None:
        return ()
    return tuple(name.strip().lower().replace("-", "_") for name in _ITEM.findall(section.group(1)))


#: The eight methods of the spec (in the spec's numbering order, not the registry's).
EIGHT = spec_methods()
