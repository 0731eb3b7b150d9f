"""lcron.benchmarks.vocabulary.VocabularyScaledShards: ids spread over RecFlow-sized tables, days read over."""

from __future__ import annotations

import numpy as np
import pytest

from lcron.benchmarks.vocabulary import RECFLOW_ID_COUNTS, VocabularyScaledShards
from lcron.data.shards import ShardSet
from lcron.errors import ConfigError


def test_day_repeat_tiles_each_day_with_its_own_id_draws(tiny_shards_2):
    root = tiny_shards_2.root if isinstance(tiny_shards_2, ShardSet) else tiny_shards_2
    plain = ShardSet(root)
    day = plain.days[0]
    n = plain.num_requests(day)
    once, thrice = VocabularyScaledShards(root), VocabularyScaledShards(root, day_repeat=3)
    assert thrice.num_requests(day) == 3 * n == 3 * once.num_requests(day)
    base, a = plain.load_day(day, mmap=False), thrice.load_day(day)
    assert all(len(v) == 3 * n for v in a.values())
    # everything but the drawn ids is the day itself, three times over
    for name in ("label", "mask", "seq_mask"):
        np.testing.assert_array_equal(a[name], np.concatenate([base[name]] * 3))
    items = a["items"][..., 0]                                           # video ids
    copies = items.reshape(3, n, -1)
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])
    # padding stays padding in every copy; other ids fall in the RecFlow table
    pad = np.concatenate([base["items"][..., 0] == 0] * 3)
    assert np.all(items[pad] == 0) and np.all((items[~pad] >= 1) & (items[~pad] < RECFLOW_ID_COUNTS["video_id"] + 1))
    # a fresh reader draws the same ids (seeded by the day)
    np.testing.assert_array_equal(VocabularyScaledShards(root, day_repeat=3).load_day(day)["items"], a["items"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_day_repeat_must_be_a_positive_integer(tiny_shards_2, bad):
    root = tiny_shards_2.root if isinstance(tiny_shards_2, ShardSet) else tiny_shards_2
    with pytest.raises(ConfigError, match="day_repeat"):
        VocabularyScaledShards(root, day_repeat=bad)
