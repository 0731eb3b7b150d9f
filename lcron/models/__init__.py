"""Stage models (DSSM, DIN, MLP) and the cascade container.

Every model maps a batch of id arrays (``lcron.data.fields``) to [B, N] float logits, one
per candidate slot, and never sees labels or candidate masks.
"""

from lcron.models.cascade import MODELS, Cascade, build_cascade, build_model
from lcron.models.din import DIN
from lcron.models.dssm import DSSM
from lcron.models.embeddings import EMBEDDING_KINDS, FeatureEmbedding
from lcron.models.mlp import MLP

__all__ = ["MODELS", "Cascade", "build_cascade", "build_model", "DIN", "DSSM", "MLP",
           "EMBEDDING_KINDS", "FeatureEmbedding"]
