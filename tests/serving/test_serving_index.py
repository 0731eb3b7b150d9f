"""Corpus embedding, faiss indexes and the vectorised set helpers, on hand-built corpora."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lcron.errors import ConfigError, DataError
from lcron.serving.index import (IndexOptions, build_corpus, build_index, clamp_k1, embed_items,
                                 overlap_recall, rows_in, search, user_vectors)

# Six items in 2-D; the item tower below returns row (video_id - 1) of this table.
ITEM_VECS = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0], [0.5, 0.5], [0.0, -1.0]], np.float32)
USER_VECS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], np.float32)


class StubTower(nn.Module):
    """A first stage whose vectors are set by hand: item -> ITEM_VECS[video_id - 1], user -> USER_VECS[user_id - 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Parameter(torch.from_numpy(ITEM_VECS), requires_grad=False)
        self.users = nn.Parameter(torch.from_numpy(USER_VECS), requires_grad=False)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.items[items[..., 0] - 1]

    def user_vectors(self, batch) -> torch.Tensor:
        return self.users[batch["user"][:, 0] - 1]


def _table(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(1, n + 1, dtype=np.int64)
    feats = np.ones((n, 8), np.int64)
    feats[:, 0] = ids
    return ids, feats


def test_exact_index_returns_the_hand_computed_top_k():
    ids, feats = _table()
    corpus = build_corpus(StubTower(), ids, feats, "flat")
    np.testing.assert_array_equal(corpus.vectors, ITEM_VECS)
    u = user_vectors(StubTower(), {"user": torch.tensor([[1], [2], [3]])})
    scores, rows = search(corpus.index, u, 3)
    # user (1,0): scores 1, 0, .9, -1, .5, 0 -> rows 0, 2, 4
    # user (0,1): 0, 1, .1, 0, .5, -1 -> rows 1, 4, 2
    # user (-1,-1): -1, -1, -1, 1, -1, 1 -> rows 3 and 5 (score 1), then a -1 tie
    np.testing.assert_array_equal(rows[0], [0, 2, 4])
    np.testing.assert_array_equal(rows[1], [1, 4, 2])
    assert set(rows[2, :2]) == {3, 5}
    np.testing.assert_allclose(scores[0], [1.0, 0.9, 0.5], rtol=1e-6)
    np.testing.assert_allclose(scores[1], [1.0, 0.5, 0.1], rtol=1e-6)
    assert corpus.video_ids[rows[0]].tolist() == [1, 3, 5]


def test_embed_items_batches_give_the_same_vectors():
    ids, feats = _table()
    np.testing.assert_array_equal(embed_items(StubTower(), feats, batch_size=4), ITEM_VECS)


def test_item_table_is_checked():
    ids, feats = _table()
    with pytest.raises(DataError, match="column 0"):
        build_corpus(StubTower(), ids + 1, feats)
    dup_ids, dup_feats = ids.copy(), feats.copy()
    dup_ids[1], dup_feats[1, 0] = 1, 1
    with pytest.raises(DataError, match="repeated video_id"):
        build_corpus(StubTower(), dup_ids, dup_feats)
    with pytest.raises(DataError, match=r"\[I, 8\]"):
        build_corpus(StubTower(), ids, feats[:, :5])
    with pytest.raises(ConfigError, match="unknown index kind"):
        build_corpus(StubTower(), ids, feats, "annoy")


def test_overlap_recall_hand_examples():
    approx = np.array([[1, 2, 3], [1, -1, -1], [7, 8, 9]])
    exact = np.array([[3, 2, 9], [1, 2, 3], [9, 8, 7]])
    np.testing.assert_allclose(overlap_recall(approx, exact), [2 / 3, 1 / 3, 1.0])
    # missing results on both sides never count as shared
    np.testing.assert_allclose(overlap_recall(np.array([[-1, -1]]), np.array([[-1, -1]])), [0.0])


def test_rows_in_is_row_wise_membership():
    values = np.array([[5, 7, -1], [5, 7, 0]])
    pool = np.array([[7, 1, 2, -1], [9, 5, -1, -1]])
    np.testing.assert_array_equal(rows_in(values, pool), [[False, True, False], [True, False, False]])


def test_clamp_k1_notes_each_clamped_value():
    ks, notes = clamp_k1([3, 6, 10], 6)
    assert ks == [3, 6, 6]
    assert len(notes) == 1 and "K1 = 10" in notes[0] and "6 items" in notes[0]
    with pytest.raises(ConfigError):
        clamp_k1([0], 6)


def test_ivf_nlist_default_is_clamped_to_39_points_per_cell():
    # 4 * sqrt(10000) = 400 cells, but 10000 // 39 = 256 is the most with 39 points each
    assert IndexOptions().resolved_nlist(10000) == 256
    assert IndexOptions().resolved_nlist(1_000_000) == 4000
    assert IndexOptions(nlist=7).resolved_nlist(10000) == 7
    assert IndexOptions().resolved_nlist(10) == 1
    with pytest.raises(ConfigError, match="nprobe"):
        IndexOptions(nprobe=0)
    with pytest.raises(ConfigError, match="unknown index option"):
        IndexOptions.from_mapping({"nprob": 3})


@pytest.fixture(scope="module")
def random_corpus():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2000, 16)).astype(np.float32), rng.normal(size=(64, 16)).astype(np.float32)


def test_approximate_indexes_report_recall_against_exact(random_corpus):
    vectors, queries = random_corpus
    k = 50
    _, exact = search(build_index(vectors, "flat"), queries, k)
    assert overlap_recall(exact, exact).tolist() == [1.0] * len(queries)
    # IVF probing every cell is an exhaustive search: recall 1
    nlist = IndexOptions().resolved_nlist(len(vectors))
    _, full = search(build_index(vectors, "ivf", {"nprobe": nlist}), queries, k)
    assert overlap_recall(full, exact).mean() == pytest.approx(1.0)
    # one probed cell of many: recall strictly between 0 and 1
    _, one = search(build_index(vectors, "ivf", {"nprobe": 1}), queries, k)
    r_one = overlap_recall(one, exact).mean()
    assert 0.0 < r_one < 1.0
    _, hnsw = search(build_index(vectors, "hnsw", {"hnsw_m": 16, "ef_search": 256}), queries, k)
    r_hnsw = overlap_recall(hnsw, exact).mean()
    assert 0.9 <= r_hnsw <= 1.0
    assert r_hnsw > r_one


def test_ivf_coarse_quantizer_is_hnsw_for_many_cells_and_finds_the_same_cells():
    """quantizer auto: exact below HNSW_QUANTIZER_MIN_NLIST cells, a graph from there; on a
    clustered corpus (cells that mean something, as trained towers give) the graph picks the
    cells the exact quantizer picks, so the results barely move, and the report says which."""
    from lcron.serving.index import HNSW_QUANTIZER_MIN_NLIST, index_options_used

    assert IndexOptions().resolved_quantizer(HNSW_QUANTIZER_MIN_NLIST - 1) == "flat"
    assert IndexOptions().resolved_quantizer(HNSW_QUANTIZER_MIN_NLIST) == "hnsw"
    assert IndexOptions(quantizer="flat").resolved_quantizer(10**6) == "flat"
    assert IndexOptions(quantizer="hnsw").resolved_quantizer(2) == "hnsw"
    with pytest.raises(ConfigError, match="quantizer.*auto, flat, hnsw.*'kmeans'"):
        IndexOptions(quantizer="kmeans")
    with pytest.raises(ConfigError, match="quantizer_ef"):
        IndexOptions(quantizer_ef=0)
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(300, 16)).astype(np.float32) * 4
    vectors = (centres[rng.integers(0, 300, 12000)] + rng.normal(size=(12000, 16))).astype(np.float32)
    queries = (centres[rng.integers(0, 300, 64)] + rng.normal(size=(64, 16))).astype(np.float32)
    k = 100
    _, exact = search(build_index(vectors, "flat"), queries, k)
    opts = {"nlist": 256, "nprobe": 16}
    flat_q = build_index(vectors, "ivf", {**opts, "quantizer": "flat"})
    hnsw_q = build_index(vectors, "ivf", {**opts, "quantizer": "hnsw", "quantizer_ef": 64})
    assert index_options_used(flat_q, "ivf")["quantizer"] == "flat"
    assert index_options_used(hnsw_q, "ivf")["quantizer"] == "hnsw (efSearch 64)"
    r_flat = overlap_recall(search(flat_q, queries, k)[1], exact).mean()
    r_hnsw = overlap_recall(search(hnsw_q, queries, k)[1], exact).mean()
    assert r_flat > 0.9 and abs(r_hnsw - r_flat) < 0.02
