"""Small building blocks shared by the stage models: MLPs, sequence means, split first layer,
and the reference-mode variants (METHODS.md section 7, "Reference model quirks")."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron.errors import ConfigError
from lcron.models.embeddings import FeatureEmbedding


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths, ReLU after every hidden layer, nothing after the last.

    ``mlp([104, 128, 64, 32])`` = Linear(104,128), ReLU, Linear(128,64), ReLU, Linear(64,32).
    No batch norm, no dropout (METHODS.md section 7, Activations). Initialisation is the
    PyTorch ``nn.Linear`` default (Kaiming-uniform weights, uniform biases).
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def masked_mean(seq_emb: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``seq_emb`` [B, L, E] over the valid steps of ``mask`` [B, L] (0/1 floats) -> [B, E].

    mean_b = sum_l m_bl e_bl / max(1, sum_l m_bl): a request without any valid step gets
    the zero vector instead of 0/0. Padded steps contribute nothing whatever they hold.
    """
    # Elementwise rather than bmm([B, 1, L] x [B, L, E]): CPU bmm's backward for these
    # thin shapes loops over the batch (thousands of tiny kernels per step).
    total = (seq_emb * mask.unsqueeze(-1)).sum(1)
    return total / mask.sum(1, keepdim=True).clamp_min(1.0)


def unmasked_mean(seq_emb: Tensor, mask: Tensor) -> Tensor:
    """Reference quirk 1: ``sum over ALL L steps of seq_emb / max(1, valid steps)`` -> [B, E].

    The published DSSM and MLP sum the whole padded sequence and divide by the number of
    valid steps, so whatever a padded step embeds to is added in. With reference-mode
    shards a padded step's cat1 is 0, an ordinary trainable row of the cat1 table (its
    padding row is 2, see :func:`use_reference_padding`), so every padded step adds that
    row; every other column of a padded step is 0 and embeds to zero.
    """
    return seq_emb.sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


def sequence_mean(seq_emb: Tensor, mask: Tensor, reference_quirks: bool) -> Tensor:
    """The DSSM/MLP sequence summary: :func:`masked_mean` (default) or :func:`unmasked_mean` (reference mode)."""
    return unmasked_mean(seq_emb, mask) if reference_quirks else masked_mean(seq_emb, mask)


def uniform_when_empty(mask: Tensor) -> Tensor:
    """Reference quirk 3: a request without any valid step attends uniformly to all L steps.

    The published DIN replaces the scores of padded steps by -2**30 + 1 before a softmax
    over all L steps. With one valid step or more the padded weights underflow to exactly
    0 in float32 (the same as the default masked softmax); with none, every step scores the
    same and the softmax is uniform, so the interest vector is the mean of the padded steps'
    embeddings instead of zero. Returning an all-ones mask for exactly those requests makes
    any masked softmax (the eager and the fused DIN attention alike) behave that way.
    """
    return torch.where(mask.sum(-1, keepdim=True) > 0, mask, torch.ones_like(mask))


# Reference quirk 2: the published cat1 table's padding index is 2 (ids stored unshifted),
# not 0 - raw category 2 embeds to a frozen zero and row 0 is an ordinary trainable row.
REFERENCE_PADDING_IDS: dict[str, int] = {"category_level_one": 2}


def use_reference_padding(embedding: nn.Module) -> None:
    """Move the padding row of each kind in :data:`REFERENCE_PADDING_IDS` to the reference's index.

    ``embedding`` is a freshly initialised :class:`lcron.models.embeddings.FeatureEmbedding`
    (padding row 0 of every kind, zero). For cat1 the zero row moves to index 2 and row 0
    takes the N(0, 1) draw that row 2 had, so initialisation consumes no extra random
    numbers; the padding buffer the lookup reads (rows that never get a gradient) points
    at row 2 from then on.
    """
    rows = embedding.padding_rows.clone()
    with torch.no_grad():
        for kind, pad in REFERENCE_PADDING_IDS.items():
            if embedding.sizes[kind] <= pad:
                raise ConfigError(f"reference mode: the {kind} table has {embedding.sizes[kind]} rows; its padding "
                                  f"index {pad} needs at least {pad + 1}")
            o = embedding.offsets[kind]
            embedding.weight[o].copy_(embedding.weight[o + pad])
            embedding.weight[o + pad].zero_()
            rows[embedding.kinds.index(kind)] = o + pad
    embedding.padding_rows.copy_(rows)


class StageModel(nn.Module):
    """The opening every stage model shares: one :class:`FeatureEmbedding` of all id kinds
    (``self.embedding``, created first so initialisation draws the same random numbers in
    every model), the width ``dim``, the reference-mode flag with its cat1 padding row, and
    the compile choice (DIN compiles its attention core; DSSM and MLP accept the choice for a
    uniform interface - their small dense layers gain nothing from it). In one place so DSSM,
    DIN and MLP cannot drift in how reference mode is set up."""

    def __init__(self, embedding_sizes: Mapping[str, int], dim: int = 8, compile: bool = False,
                 reference_quirks: bool = False) -> None:
        super().__init__()
        self.dim = int(dim)
        self.reference_quirks = bool(reference_quirks)
        self.embedding = FeatureEmbedding(embedding_sizes, self.dim)
        if self.reference_quirks:
            use_reference_padding(self.embedding)
        # Not named ``compile``: that would shadow nn.Module.compile.
        self.use_compile = bool(compile)


def score_candidates(net: nn.Sequential, request_part: Tensor, candidate_parts: Sequence[Tensor]) -> Tensor:
    """``net(cat([request_part broadcast over N, *candidate_parts], -1))`` without the concatenation.

    Why: the first layer's input is [per-request features, per-candidate features]; its
    product splits into W_req @ x_req (once per request, [B, H]) + sum_p W_p @ x_p (once per
    candidate, [B, N, H]), so the per-request columns are neither copied N times nor
    multiplied N times. The weights are the columns of the one ``nn.Linear`` in ``net[0]``,
    so the state dict is that of the plain concatenating network.

    request_part [B, R]; candidate_parts [B, N, C_p]; returns net's output [B, N, out].
    """
    first: nn.Linear = net[0]  # type: ignore[assignment]
    w = first.weight
    r = request_part.shape[-1]
    h = F.linear(request_part, w[:, :r], first.bias).unsqueeze(1)
    start = r
    for part in candidate_parts:
        c = part.shape[-1]
        h = h + F.linear(part, w[:, start:start + c])
        start += c
    if start != w.shape[1]:
        raise ConfigError(f"score_candidates: inputs have {start} features, the first layer expects {w.shape[1]}")
    for layer in list(net)[1:]:
        h = layer(h)
    return h
