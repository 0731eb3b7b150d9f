"""Random model batches for the model tests (plain helpers, imported by the test files)."""

from __future__ import annotations

import torch

from lcron.data import fields

# Small vocabularies: id kinds 5..30 rows; time kinds fixed by fields.TIME_VOCAB.
ID_COUNTS = {"user_id": 20, "device_id": 12, "age": 6, "gender": 3, "province": 9, "video_id": 28,
             "author_id": 15, "category_level_two": 11, "category_level_one": 7, "upload_type": 4}
SIZES = fields.embedding_sizes(ID_COUNTS)


def _ids(gen: torch.Generator, shape: tuple[int, ...], kinds: tuple[str, ...]) -> torch.Tensor:
    """Non-padding ids (1 .. size-1) of each column's kind, int64, shape [*shape, len(kinds)]."""
    cols = [torch.randint(1, SIZES[k], shape, generator=gen) for k in kinds]
    return torch.stack(cols, -1)


def make_batch(b: int = 3, n: int = 6, seq_len: int = 7, seed: int = 0,
               dtype: torch.dtype = torch.int64) -> dict[str, torch.Tensor]:
    """A batch in the shard layout: left-padded sequences of random lengths (one request has
    none when b >= 3), padding candidate slots at the end of request 0, padded entries all 0."""
    g = torch.Generator().manual_seed(seed)
    seq = _ids(g, (b, seq_len), fields.SEQ_KINDS)
    lengths = torch.randint(1, seq_len + 1, (b,), generator=g)
    if b >= 3:
        lengths[2] = 0
    steps = torch.arange(seq_len)
    seq_mask = (steps[None, :] >= seq_len - lengths[:, None]).to(torch.int64)
    seq = seq * seq_mask[..., None]
    items = _ids(g, (b, n), fields.ITEM_KINDS)
    items[0, n - 2:] = 0
    batch = {
        "context": _ids(g, (b,), fields.CONTEXT_KINDS),
        "user": _ids(g, (b,), fields.USER_KINDS),
        "seq": seq,
        "seq_mask": seq_mask,
        "items": items,
    }
    return {k: v.to(dtype) for k, v in batch.items()}
