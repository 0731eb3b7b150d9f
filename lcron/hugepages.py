"""Transparent huge pages for PyTorch's large CPU allocations (Linux), asked for on ``import lcron``.

Why: at RecFlow vocabulary an embedding table is 11M rows (355 MB per stage model, and as
much again for each Adam moment), and a training step reads and writes ~180k random rows
of each: with 4 KiB pages nearly every row costs a TLB miss, and every large temporary of
a step (gradients, gathered rows) is faulted in page by page. PyTorch backs its CPU
allocations of 2 MiB and more with transparent huge pages (``madvise(MADV_HUGEPAGE)``)
when the environment variable ``THP_MEM_ALLOC_ENABLE`` is 1, which it reads once per
process, at its first allocation. Measured (docs/scale.md): ~8% less CPU time per lazy
training step at RecFlow vocabulary, a third of the page faults; numbers are unchanged
(only where the memory lies changes).

So ``import lcron`` sets it, unless it is already set (``THP_MEM_ALLOC_ENABLE=0`` keeps
4 KiB pages). It takes effect in processes that import lcron before torch allocates
anything - every ``lcron`` command, benchmark worker and pipeline component - and is
inherited by their children. A kernel with transparent huge pages off ignores it.
"""

from __future__ import annotations

import os

#: PyTorch's switch (c10 CPU allocator): "1" = huge pages for allocations >= 2 MiB.
ENV = "THP_MEM_ALLOC_ENABLE"


def ask_for_huge_pages() -> bool:
    """Set :data:`ENV` to 1 unless the environment already says; True if huge pages are asked for."""
    value = os.environ.setdefault(ENV, "1")
    return value.strip() not in ("", "0")
