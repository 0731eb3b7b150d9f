"""Turning a day of shards into batches of tensors.

Training and evaluation read a day's arrays (memory-mapped ``.npy``), gather the rows of a
batch with one fancy-index per array and hand the models int64 tensors. The shuffle order
of a day depends only on (seed, day index), so a run resumed from a day's checkpoint sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import torch

from .data.fields import MODEL_INPUTS

TARGET_ARRAYS = ("label", "mask")


def day_order(num_requests: int, seed: int, day_index: int, shuffle: bool) -> np.ndarray:
    """The request order of one training day: a permutation drawn from (seed, day index)."""
    if not shuffle:
        return np.arange(num_requests)
    return np.random.default_rng([int(seed), int(day_index)]).permutation(num_requests)


def batch_slices(num_requests: int, batch_size: int, drop_last: bool) -> list[slice]:
    """Consecutive [start, stop) ranges; the last partial batch is dropped when asked."""
    stop = (num_requests // batch_size) * batch_size if drop_last else num_requests
    return [slice(s, min(s + batch_size, num_requests)) for s in range(0, stop, batch_size)]


def gather(arrays: Mapping[str, np.ndarray], rows: np.ndarray | slice, names: tuple[str, ...],
           device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Rows of the named arrays as tensors on ``device`` (ids as int64, masks/labels as float32)."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        part = np.ascontiguousarray(arrays[name][rows])
        if not part.flags.writeable:  # a slice of a memory-mapped shard: torch wants its own memory
            part = part.copy()
        t = torch.from_numpy(part)
        if name in ("label", "mask", "seq_mask"):
            t = t.to(torch.float32)
        else:
            t = t.to(torch.int64)
        out[name] = t.to(device, non_blocking=True)
    return out


def iter_batches(arrays: Mapping[str, np.ndarray], order: np.ndarray, batch_size: int, drop_last: bool,
                 device: torch.device | str = "cpu",
                 names: tuple[str, ...] = MODEL_INPUTS + TARGET_ARRAYS) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of ``order``'s rows, in that order."""
    for sl in batch_slices(len(order), batch_size, drop_last):
        yield gather(arrays, order[sl], names, device)
