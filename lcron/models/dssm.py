"""DSSM: the two-tower retrieval model (user tower . item tower).

Architecture (dim d = 8, METHODS.md section 2):
  user tower: [context (3d), user (5d), mean of the sequence over valid steps (5d)] (13d)
              -> 128 -> ReLU -> 64 -> ReLU -> 32
  item tower: item (8d: 5 ids + upload weekday/hour/minute) -> 128 -> ReLU -> 64 -> ReLU -> 32
  logit = <user vector, item vector>
The towers meet only in the dot product, so the item tower runs alone on a whole corpus
(``item_vectors``) and the user tower alone per request (``user_vectors``) - what the
serving evaluation puts into and queries from an ANN index.

``reference_quirks=True`` reproduces the published DSSM (METHODS.md section 7, quirks 1
and 2): the sequence summary is the unmasked mean (:func:`lcron.models.layers.unmasked_mean`)
and the cat1 table's padding row is 2 (:func:`lcron.models.layers.use_reference_padding`);
it expects shards preprocessed with ``--reference-quirks``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from lcron.data import fields
from lcron.models.embeddings import float_mask, require
from lcron.models.layers import StageModel, mlp, sequence_mean

TOWER = (128, 64, 32)


class DSSM(StageModel):
    """Two-tower model; ``forward(batch)`` = (user_vectors[:, None] * item_vectors).sum(-1)."""

    def __init__(self, embedding_sizes: Mapping[str, int], dim: int = 8, compile: bool = False,
                 reference_quirks: bool = False) -> None:
        super().__init__(embedding_sizes, dim, compile, reference_quirks)
        n_user = len(fields.CONTEXT_FIELDS) + len(fields.USER_FIELDS) + len(fields.SEQ_FIELDS)
        self.user_tower = mlp([n_user * self.dim, *TOWER])
        self.item_tower = mlp([len(fields.ITEM_FIELDS) * self.dim, *TOWER])

    @property
    def vector_dim(self) -> int:
        """Width of the user and item vectors (32)."""
        return TOWER[-1]

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, N]: dot product of each request's user vector with each candidate's item vector."""
        context, user, seq, seq_mask, items = require(batch, *fields.MODEL_INPUTS)
        ctx_e, user_e, seq_e, item_e = self.embedding(context=context, user=user, seq=seq, items=items)
        u = self._user_tower(ctx_e, user_e, seq_e, float_mask(seq_mask, seq, seq_e.dtype))
        v = self.item_tower(item_e)                                            # [B, N, 32]
        # Elementwise, not bmm: CPU bmm's backward loops over the batch for [B, N, 32] x [B, 32, 1].
        return (v * u.unsqueeze(1)).sum(-1)

    def user_vectors(self, batch: Mapping[str, Tensor]) -> Tensor:
        """User tower alone: [B, 32] from context, user, seq and seq_mask (items not needed)."""
        context, user, seq, seq_mask = require(batch, *fields.REQUEST_INPUTS)
        ctx_e, user_e, seq_e = self.embedding(context=context, user=user, seq=seq)
        return self._user_tower(ctx_e, user_e, seq_e, float_mask(seq_mask, seq, seq_e.dtype))

    def item_vectors(self, items: Tensor) -> Tensor:
        """Item tower alone: items [..., 8] (ITEM_FIELDS ids) -> [..., 32], any leading shape."""
        (item_e,) = self.embedding(items=items)
        return self.item_tower(item_e)

    def _user_tower(self, ctx_e: Tensor, user_e: Tensor, seq_e: Tensor, mask: Tensor) -> Tensor:
        return self.user_tower(torch.cat([ctx_e, user_e, sequence_mean(seq_e, mask, self.reference_quirks)], -1))
