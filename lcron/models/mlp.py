"""MLP ranker: one network on [request features, mean sequence, candidate features].

Architecture (dim d = 8, METHODS.md section 2):
  [user/context (8d), mean of the sequence over valid steps (5d), item (8d)] (21d)
      -> 128 -> ReLU -> 64 -> ReLU -> 32 -> ReLU -> 1
The first 13d columns are the same for every candidate of a request, so the first layer
is evaluated as W_req x_req once per request plus W_item x_item per candidate
(:func:`lcron.models.layers.score_candidates`); the parameters are those of the plain
concatenating network.

``reference_quirks=True``: the published MLP's unmasked sequence mean and cat1 padding
row 2 (METHODS.md section 7, quirks 1 and 2), as in :class:`lcron.models.dssm.DSSM`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from lcron.data import fields
from lcron.models.embeddings import float_mask, require
from lcron.models.layers import StageModel, mlp, score_candidates, sequence_mean

HIDDEN = (128, 64, 32)


class MLP(StageModel):
    """Pointwise candidate scorer without attention (the three-stage pre-rank model)."""

    def __init__(self, embedding_sizes: Mapping[str, int], dim: int = 8, compile: bool = False,
                 reference_quirks: bool = False) -> None:
        super().__init__(embedding_sizes, dim, compile, reference_quirks)
        width = (len(fields.CONTEXT_FIELDS) + len(fields.USER_FIELDS) + len(fields.SEQ_FIELDS)
                 + len(fields.ITEM_FIELDS)) * self.dim
        self.head = mlp([width, *HIDDEN, 1])

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, N] for ``batch`` (context, user, seq, seq_mask, items; see lcron.data.fields)."""
        context, user, seq, seq_mask, items = require(batch, *fields.MODEL_INPUTS)
        ctx_e, user_e, seq_e, item_e = self.embedding(context=context, user=user, seq=seq, items=items)
        mask = float_mask(seq_mask, seq, seq_e.dtype)
        request = torch.cat([ctx_e, user_e, sequence_mean(seq_e, mask, self.reference_quirks)], -1)  # [B, 13d]
        return score_candidates(self.head, request, [item_e]).squeeze(-1)
