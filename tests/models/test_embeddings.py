"""The shared id embedding: one block of rows per kind, padding, dtypes, input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lcron.data import fields
from lcron.errors import ConfigError, DataError
from lcron.models import DSSM, EMBEDDING_KINDS, FeatureEmbedding, build_model
from .model_batches import SIZES, make_batch


def test_layout_one_block_per_kind():
    emb = FeatureEmbedding(SIZES, dim=4)
    assert emb.weight.shape == (sum(SIZES[k] for k in EMBEDDING_KINDS), 4)
    # blocks in canonical order: user_id first (21 rows), then device_id (14 rows), ...
    assert emb.offsets["user_id"] == 0 and emb.offsets["device_id"] == SIZES["user_id"] == 22
    assert emb.table("video_id").data_ptr() == emb.weight[emb.offsets["video_id"]].data_ptr()
    # a candidate's video id and a sequence step's video id read the same rows, and so do
    # the request's weekday and the upload weekday
    assert emb._items_offsets[0] == emb._seq_offsets[0] == emb.offsets["video_id"]
    assert emb._items_offsets[5] == emb._context_offsets[0] == emb.offsets["weekday"]


def test_lookup_equals_per_kind_tables_and_padding_is_zero():
    torch.manual_seed(0)
    emb = FeatureEmbedding(SIZES, dim=3)
    items = torch.tensor([[[3, 2, 1, 1, 2, 7, 24, 60], [0, 0, 0, 0, 0, 0, 0, 0]]])
    (out,) = emb(items=items)
    assert out.shape == (1, 2, 24)
    expected = torch.cat([F.embedding(items[..., c], emb.table(k)) for c, k in enumerate(fields.ITEM_KINDS)], -1)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(out[0, 1], torch.zeros(24))                      # padding ids embed to 0


def test_video_table_is_shared_by_candidates_and_sequence():
    torch.manual_seed(0)
    model = DSSM(SIZES)
    batch = make_batch(b=2, n=3, seq_len=4, seed=0)
    batch["items"][:, :, 0] = 5                                         # every candidate is video 5
    batch["seq"][:, :, 0] = 9 * batch["seq_mask"]                       # every viewed video is 9
    model(batch).sum().backward()
    start = model.embedding.offsets["video_id"]
    rows = model.embedding.weight.grad[start:start + SIZES["video_id"]]
    nonzero = rows.abs().sum(1).nonzero().flatten().tolist()
    assert nonzero == [5, 9]                                            # both sides update one table
    # and a change of row 5 of that table moves the candidate side
    before = model.item_vectors(batch["items"])
    with torch.no_grad():
        model.embedding.table("video_id")[5] += 1.0
    assert not torch.allclose(model.item_vectors(batch["items"]), before)


def test_padding_rows_get_no_gradient():
    torch.manual_seed(0)
    model = build_model("mlp", SIZES)
    batch = make_batch(b=3, n=5, seq_len=6, seed=1)
    model(batch).sum().backward()
    g = model.embedding.weight.grad
    pad = model.embedding.padding_rows
    assert torch.equal(g[pad], torch.zeros(len(pad), g.shape[1]))
    assert torch.equal(model.embedding.weight[pad], torch.zeros(len(pad), g.shape[1]))
    assert g.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("kind", ["dssm", "din", "mlp"])
def test_any_integer_width(kind, dtype):
    torch.manual_seed(0)
    model = build_model(kind, SIZES)
    ref = model(make_batch(seed=2))
    out = model(make_batch(seed=2, dtype=dtype))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_bad_inputs_are_named():
    model = build_model("din", SIZES)
    batch = make_batch()
    bad = dict(batch, items=batch["items"].clone())
    bad["items"][1, 2, 1] = SIZES["author_id"]                          # one past the table
    with pytest.raises(DataError, match=r"'items' column 1 \(author_id\).*\[0, 16\].*max 17"):
        model(bad)
    with pytest.raises(DataError, match=r"'seq' must have shape \[B, L, 5\]"):
        model(dict(batch, seq=batch["seq"][..., :4]))
    with pytest.raises(DataError, match="integer ids"):
        model(dict(batch, user=batch["user"].float()))
    with pytest.raises(DataError, match="'seq_mask' must have shape"):
        model(dict(batch, seq_mask=batch["seq_mask"][:, 1:]))
    with pytest.raises(DataError, match=r"lacks model input\(s\) \['items'\]"):
        model({k: v for k, v in batch.items() if k != "items"})
    negative = dict(batch, context=batch["context"].clone())
    negative["context"][0, 2] = -1
    with pytest.raises(DataError, match=r"'context' column 2 \(minute\)"):
        model(negative)


def test_missing_or_bad_sizes():
    sizes = dict(SIZES)
    del sizes["video_id"]
    with pytest.raises(ConfigError, match="video_id"):
        build_model("dssm", sizes)
    with pytest.raises(ConfigError, match="unknown model 'gbdt'"):
        build_model("gbdt", SIZES)


def test_gather_backward_equals_dense_embedding_gradient():
    torch.manual_seed(0)
    emb = FeatureEmbedding(SIZES, dim=3)
    items = torch.tensor([[[3, 2, 1, 1, 2, 7, 24, 60], [3, 0, 5, 1, 0, 7, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]]])
    up = torch.randn(1, 3, 24)
    (out,) = emb(items=items)
    (out * up).sum().backward()
    reference = torch.nn.Parameter(emb.weight.detach().clone())
    rows = items + emb._items_offsets
    (torch.nn.functional.embedding(rows, reference).flatten(-2) * up).sum().backward()
    expected = reference.grad.clone()
    expected[emb.padding_rows] = 0                                      # padding ids get no gradient
    torch.testing.assert_close(emb.weight.grad, expected)
    # video 3 appears twice: its gradient is the sum of both uses
    assert emb.weight.grad[emb.offsets["video_id"] + 3].abs().sum() > 0
