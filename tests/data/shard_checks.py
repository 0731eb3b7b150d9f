"""One comparison of two shard sets, shared by the tests that preprocess the same data from
two places (a local folder and an object store, directly or through the pipeline's ingest)."""

from __future__ import annotations

import numpy as np

from lcron.data import fields


def assert_same_shards(expected, actual) -> None:
    """Same days, and per day every shard array equal in value and dtype; same item table."""
    assert actual.days == expected.days
    for day in expected.days:
        a, b = expected.load_day(day), actual.load_day(day)
        for name in fields.SHARD_ARRAYS:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{day} {name}")
            assert a[name].dtype == b[name].dtype, f"{day} {name}"
    for x, y in zip(expected.item_table(), actual.item_table()):
        np.testing.assert_array_equal(x, y)
