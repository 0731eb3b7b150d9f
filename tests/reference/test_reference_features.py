"""``preprocess(reference_quirks=True)``: the reference's feature conventions on a hand-built request.

METHODS.md section 7: the reference stores cat1 unshifted (its table's padding index is 2),
leaves padded sequence steps all 0 (cat1 0 = an ordinary row) and fills padding slots with
[0, 0, 0, 2, 0, 0, 0, 0]. Everything else is the same as in default mode.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lcron.data.shards import ShardSet, config_hash, preprocess
from lcron.errors import OutputExistsError
from lcron.settings import TWO_STAGE

DAY = "2024-01-15"
CAT1 = 3


def test_reference_features_on_the_hand_built_requests(handmade, tmp_path, other_tz):
    src = handmade.write(tmp_path / "recflow")
    default = preprocess(src, tmp_path / "default", 2, progress=False).load_day(DAY)
    shards = preprocess(src, tmp_path / "ref", 2, progress=False, reference_quirks=True)
    assert shards.reference_quirks and json.loads((tmp_path / "ref" / "dataset.json").read_text())["reference_quirks"]
    ref = shards.load_day(DAY)
    # Hand-checked literals. Request A, slot 0: video 15 (cat1 raw 15 % 10 = 5, stored as 5, not 6).
    np.testing.assert_array_equal(ref["items"][0, 0], [16, 16, 16, 5, 1, 1, 21, 16])
    # A's rank_neg holds 3 items (slots 10-12): slot 13 is padding -> [0, 0, 0, 2, 0, 0, 0, 0].
    np.testing.assert_array_equal(ref["items"][0, 13], [0, 0, 0, 2, 0, 0, 0, 0])
    # A's sequence: valid steps 47..49 are videos 0, 71, 72 -> cat1 raw 0, 1, 2 (2 collides with
    # the reference's padding index; 0 with the padded steps' row); padded steps all 0.
    np.testing.assert_array_equal(ref["seq"][0, 47:], [[1, 1, 1, 0, 1], [72, 22, 12, 1, 2], [73, 23, 13, 2, 3]])
    assert not ref["seq"][0, :47].any() and not ref["seq"][1].any()
    # The rest is exactly the default shards, with cat1 one lower on filled slots and valid steps.
    mask = default["mask"].astype(bool)
    exp_items = np.array(default["items"], dtype=np.int64)
    exp_items[..., CAT1] = np.where(mask, exp_items[..., CAT1] - 1, 2)
    np.testing.assert_array_equal(ref["items"], exp_items)
    exp_seq = np.array(default["seq"], dtype=np.int64)
    exp_seq[..., CAT1] = np.where(default["seq_mask"] > 0, exp_seq[..., CAT1] - 1, 0)
    np.testing.assert_array_equal(ref["seq"], exp_seq)
    for name in ("request_id", "context", "user", "seq_mask", "mask", "label"):
        np.testing.assert_array_equal(ref[name], default[name])


def test_default_shards_keep_their_hash_and_record_the_mode(handmade, tmp_path):
    assert config_hash(TWO_STAGE, 8) == config_hash(TWO_STAGE, 8, False) != config_hash(TWO_STAGE, 8, True)
    shards = preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    assert shards.reference_quirks is False
    assert json.loads((tmp_path / "s" / "dataset.json").read_text())["reference_quirks"] is False


def test_an_older_dataset_json_without_the_field_is_default_mode(handmade, tmp_path):
    preprocess(handmade.write(tmp_path / "recflow"), tmp_path / "s", 2, progress=False)
    meta_path = tmp_path / "s" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    del meta["reference_quirks"]
    meta_path.write_text(json.dumps(meta))
    # The edit changes dataset.json's size, which the completion marker would refuse: open it
    # as an inspection (the field's absence is what is tested here).
    assert ShardSet(tmp_path / "s", require_complete=False).reference_quirks is False


def test_switching_the_mode_in_one_folder_needs_overwrite(handmade, tmp_path):
    src = handmade.write(tmp_path / "recflow")
    preprocess(src, tmp_path / "s", 2, progress=False)
    with pytest.raises(OutputExistsError, match="reference_quirks False.*reference_quirks True"):
        preprocess(src, tmp_path / "s", 2, progress=False, reference_quirks=True)
    assert preprocess(src, tmp_path / "s", 2, progress=False, reference_quirks=True, overwrite=True).reference_quirks
