"""The cascade container: one stage model per stage of a setting, and the model factory."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from lcron.errors import ConfigError
from lcron.models.din import DIN
from lcron.models.dssm import DSSM
from lcron.models.mlp import MLP
from lcron.settings import Setting, get_setting

MODELS: dict[str, type[nn.Module]] = {"dssm": DSSM, "din": DIN, "mlp": MLP}


def build_model(kind: str, embedding_sizes: Mapping[str, int], dim: int = 8, compile: bool = False,
                reference_quirks: bool = False) -> nn.Module:
    """A fresh stage model of ``kind`` ("dssm", "din" or "mlp") with PyTorch default initialisation.

    ``embedding_sizes``: table size per kind, from ``lcron.data.fields.embedding_sizes``.
    ``compile``: fuse the model's hot path with torch.compile (falls back to eager with a
    warning if compiling fails). ``reference_quirks``: the published models' behaviour
    (METHODS.md section 7; for shards preprocessed with ``--reference-quirks``). Same torch
    seed -> same initial weights.
    """
    if kind not in MODELS:
        raise ConfigError(f"unknown model {kind!r}; known: {sorted(MODELS)}")
    return MODELS[kind](embedding_sizes, dim=dim, compile=compile, reference_quirks=reference_quirks)


class Cascade(nn.Module):
    """One model per stage, keyed by stage name; ``forward(batch)`` -> [B, N] logits per stage.

    The models are independent (no shared weights); they are created in stage order, so a
    torch seed fixes all of them. ``stages`` is an ``nn.ModuleDict`` keyed by
    ``setting.stage_names`` (state dict keys ``stages.<stage>.<param>``).
    """

    def __init__(self, setting: Setting, embedding_sizes: Mapping[str, int], dim: int = 8,
                 compile: bool = False, reference_quirks: bool = False) -> None:
        super().__init__()
        self.setting = setting
        self.embedding_sizes = {k: int(v) for k, v in embedding_sizes.items()}
        self.dim = int(dim)
        self.reference_quirks = bool(reference_quirks)
        self.stages = nn.ModuleDict({
            name: build_model(kind, embedding_sizes, dim=dim, compile=compile, reference_quirks=reference_quirks)
            for name, kind in zip(setting.stage_names, setting.stage_models)
        })

    def forward(self, batch: Mapping[str, Tensor]) -> list[Tensor]:
        """Logits of every stage model for every slot, first stage first: a list of [B, N]."""
        return [model(batch) for model in self.stages.values()]

    @property
    def models(self) -> list[nn.Module]:
        """The stage models in stage order (for one optimizer per model)."""
        return list(self.stages.values())

    @property
    def retrieval(self) -> DSSM:
        """The first-stage (two-tower) model, whose towers serve the ANN retrieval."""
        return self.stages[self.setting.stage_names[0]]  # type: ignore[return-value]

    def config(self) -> dict[str, Any]:
        """What rebuilds this cascade with ``build_cascade(**config)`` before loading a state dict."""
        return {"setting": self.setting.to_dict(), "embedding_sizes": dict(self.embedding_sizes), "dim": self.dim,
                "reference_quirks": self.reference_quirks}


def build_cascade(setting: "Setting | str | int | Mapping[str, Any]", embedding_sizes: Mapping[str, int],
                  dim: int = 8, compile: bool = False, reference_quirks: bool = False) -> Cascade:
    """The cascade of ``setting`` (a Setting, a built-in name, 2/3, a setting file, or a setting dict);
    ``reference_quirks`` builds every stage model in reference mode (see :func:`build_model`)."""
    if isinstance(setting, Mapping):
        setting = Setting.from_dict(setting)
    return Cascade(get_setting(setting), embedding_sizes, dim=dim, compile=compile,
                   reference_quirks=reference_quirks)
