"""DIN (Deep Interest Network): candidate-aware attention over the behaviour sequence.

Architecture (dim d = 8, METHODS.md section 2):
  attention, per candidate n and sequence step l:
      a_nl = Linear(80 -> 1)( ReLU( Linear(10d -> 80)([seq_l (5d), item_n ids (5d)]) ) )
      alpha_n = masked softmax over valid steps; interest_n = sum_l alpha_nl seq_l   (5d)
  score: MLP [user/context (8d), interest_n (5d), item_n ids (5d), upload time (3d)]
         (21d) -> 128 -> ReLU -> 128 -> ReLU -> 32 -> ReLU -> 1

The decomposition that makes it affordable: the first attention layer's weight splits
into a sequence part and an item part, W [seq | item], so
    W [seq_l, item_n] + b = (W_s seq_l + b) + W_i item_n.
``W_s seq`` is computed once per request ([B, L, 80]) and ``W_i item`` once per candidate
([B, N, 80]); only their broadcast sum [B, N, L, 80] goes through ReLU and the 80 -> 1
layer, inside :func:`lcron.models.fused.attention_pool` (fused by torch.compile). The
[B * N, L, 10d] concatenation of the textbook formulation is never built. The parameters
are those of the plain layers (``attention[0]`` is the Linear(10d, 80)), so the naive
concatenating implementation with the same state dict gives the same logits.

``reference_quirks=True`` reproduces the published DIN (METHODS.md section 7, quirks 2 and
3): cat1 padding row 2, and a request without history attends uniformly to all L padded
steps (:func:`lcron.models.layers.uniform_when_empty`, applied to the mask before the
attention core, so the eager and the fused path both do it).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron.data import fields
from lcron.models.embeddings import float_mask, require
from lcron.models.fused import (attention_pool, blocked_attention_pool, compiled_attention_pool,
                                compiled_inference_attention_pool)
from lcron.models.layers import StageModel, mlp, score_candidates, uniform_when_empty

ATTENTION_HIDDEN = 80
HIDDEN = (128, 128, 32)


class DIN(StageModel):
    """Scores every candidate of a request with attention over the request's sequence."""

    def __init__(self, embedding_sizes: Mapping[str, int], dim: int = 8, compile: bool = False,
                 reference_quirks: bool = False) -> None:
        super().__init__(embedding_sizes, dim, compile, reference_quirks)
        n_seq, n_id, n_time = len(fields.SEQ_FIELDS), len(fields.ITEM_ID_FIELDS), len(fields.ITEM_TIME_FIELDS)
        n_req = len(fields.CONTEXT_FIELDS) + len(fields.USER_FIELDS)
        self.attention = mlp([(n_seq + n_id) * self.dim, ATTENTION_HIDDEN, 1])
        self.head = mlp([(n_req + n_seq + n_id + n_time) * self.dim, *HIDDEN, 1])

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits [B, N] for ``batch`` (context, user, seq, seq_mask, items; see lcron.data.fields)."""
        context, user, seq, seq_mask, items = require(batch, *fields.MODEL_INPUTS)
        ctx_e, user_e, seq_e, item_e = self.embedding(context=context, user=user, seq=seq, items=items)
        mask = float_mask(seq_mask, seq, seq_e.dtype)
        if self.reference_quirks:
            mask = uniform_when_empty(mask)
        n_id = len(fields.ITEM_ID_FIELDS) * self.dim
        att_in: nn.Linear = self.attention[0]  # type: ignore[assignment]
        att_out: nn.Linear = self.attention[2]  # type: ignore[assignment]
        w = att_in.weight
        seq_w = seq_e.shape[-1]
        seq_proj = F.linear(seq_e, w[:, :seq_w], att_in.bias)          # [B, L, 80], once per request
        item_proj = F.linear(item_e[..., :n_id], w[:, seq_w:])          # [B, N, 80], once per candidate
        if torch.compiler.is_compiling():  # inside a torch.compile of the whole model: inductor fuses the plain core
            pool = attention_pool
        elif not self.use_compile:  # eager: without autograd (evaluation, serving), in cache-sized blocks
            pool = attention_pool if torch.is_grad_enabled() else blocked_attention_pool
        elif torch.is_grad_enabled():
            pool = compiled_attention_pool()
        else:  # evaluation / serving: one inference graph, no autograd split
            pool = compiled_inference_attention_pool()
        interest = pool(item_proj, seq_proj, att_out.weight[0], att_out.bias[0], seq_e, mask)
        request = torch.cat([ctx_e, user_e], -1)                        # [B, 8d]
        return score_candidates(self.head, request, [interest, item_e]).squeeze(-1)
