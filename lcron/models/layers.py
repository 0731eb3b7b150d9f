"""Small building blocks shared by the stage models: MLPs, masked mean, split first layer."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lcron.errors import ConfigError


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
