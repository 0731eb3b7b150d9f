"""Parameters and inputs of the published reference models -> this project's models.

The published code (kwai/LCRON ``deep_components/models.py``) keeps one ``nn.Embedding``
per kind of id and names its layers ``user_encoder``/``photo_encoder`` (DSSM), ``din_mlp``/
``mlp`` (DIN) and ``mlpx`` (MLP). This project's models keep one embedding matrix with a
block of rows per kind (:class:`lcron.models.embeddings.FeatureEmbedding`) and put the user
fields in another order (age before gender). The mapping below is the whole difference:

* table ``<ref>_emb.weight`` -> the rows of its kind in ``embedding.weight``; the time
  tables of the reference have one unused row more (weekday 9 vs 8, ...) that is dropped;
* in default mode cat1 is shifted (this project stores raw id + 1, padding 0) so the cat1
  block is the reference table moved down one row; in reference mode it is copied as is
  (raw ids, padding row 2 - :func:`lcron.models.layers.use_reference_padding`);
* the first layer of every network whose input starts with the request blocks (DSSM user
  tower, DIN head, MLP head) gets its gender and age column blocks swapped.

Used by the tests that load ``reference_cases/models.json`` and by ``lcron import-reference``
(checkpoints trained by the published code).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lcron.data import fields
from lcron.errors import ConfigError, DataError

# Reference embedding table -> this project's kind.
TABLES: dict[str, str] = {
    "uid_emb": "user_id", "did_emb": "device_id", "age_emb": "age", "gender_emb": "gender",
    "province_emb": "province", "vid_emb": "video_id", "aid_emb": "author_id",
    "cate_two_emb": "category_level_two", "cate_one_emb": "category_level_one", "up_type_emb": "upload_type",
    "wday_emb": "weekday", "hour_emb": "hour", "min_emb": "minute",
}
# Reference class -> (its network modules -> this project's module names).
LAYERS: dict[str, dict[str, str]] = {
    "DSSM": {"user_encoder": "user_tower", "photo_encoder": "item_tower"},
    "DIN": {"din_mlp": "attention", "mlp": "head"},
    "MLP": {"mlpx": "head"},
}
# This project's model kind per reference class.
KINDS: dict[str, str] = {"DSSM": "dssm", "DIN": "din", "MLP": "mlp"}
# First layers whose input starts with [wday, hour, min, uid, did, gender, age, province].
REQUEST_FIRST_LAYERS = ("user_encoder.0", "mlp.0", "mlpx.0")
# Reference request block order -> ours: block i of ours is block _REQUEST_PERM[i] of the reference.
_REF_REQUEST = ("weekday", "hour", "minute", "user_id", "device_id", "gender", "age", "province")
_OUR_REQUEST = fields.CONTEXT_FIELDS + fields.USER_FIELDS
_REQUEST_PERM = [_REF_REQUEST.index(f) for f in _OUR_REQUEST]
CAT1 = "category_level_one"


def reference_class(ref_state: Mapping[str, Tensor]) -> str:
    """Which reference model a state dict belongs to, from its layer names."""
    for cls, layers in LAYERS.items():
        if all(any(k.startswith(m + ".") for k in ref_state) for m in layers):
            return cls
    raise DataError(f"not a reference DSSM/DIN/MLP state dict (keys: {sorted(ref_state)[:6]}...); expected layers "
                    f"{ {c: sorted(m) for c, m in LAYERS.items()} }")


def embedding_sizes(ref_state: Mapping[str, Tensor]) -> dict[str, int]:
    """This project's embedding table sizes for a reference model (id tables as they are, time tables fixed)."""
    sizes: dict[str, int] = {}
    for table, kind in TABLES.items():
        key = f"{table}.weight"
        if key not in ref_state:
            raise DataError(f"reference state dict lacks {key!r} (the {kind} table)")
        rows = int(ref_state[key].shape[0])
        if kind in fields.TIME_VOCAB:
            if rows < fields.TIME_VOCAB[kind]:
                raise DataError(f"reference {key} has {rows} rows, fewer than the {fields.TIME_VOCAB[kind]} "
                                f"{kind} values")
            sizes[kind] = fields.TIME_VOCAB[kind]
        else:
            sizes[kind] = rows
    return sizes


def _permute_request_blocks(weight: Tensor, dim: int) -> Tensor:
    cols = [torch.arange(b * dim, (b + 1) * dim) for b in _REQUEST_PERM]
    head = torch.cat(cols)
    return torch.cat([weight[:, head], weight[:, len(_REQUEST_PERM) * dim:]], 1)


def convert_state_dict(ref_state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """The state dict of this project's ``model`` (a DSSM/DIN/MLP) holding the reference's parameters.

    ``model`` decides the layout: its embedding kinds and sizes, and its mode
    (``model.reference_quirks``: cat1 copied raw, or moved down one row for shifted ids).
    """
    cls = reference_class(ref_state)
    if KINDS[cls] != type(model).__name__.lower():
        raise ConfigError(f"reference {cls} parameters cannot be loaded into a {type(model).__name__}")
    emb = model.embedding
    dim = emb.dim
    weight = torch.zeros_like(emb.weight)
    for table, kind in TABLES.items():
        src = ref_state[f"{table}.weight"].detach().to(weight.dtype)
        if src.shape[1] != dim:
            raise DataError(f"reference {table}.weight has width {src.shape[1]}, the model's embedding dim is {dim}")
        size, o = emb.sizes[kind], emb.offsets[kind]
        if kind == CAT1 and not model.reference_quirks:
            block = torch.cat([src.new_zeros(1, dim), src])[:size]      # raw id r -> row r + 1, padding row 0
        else:
            block = src[:size]
        if block.shape[0] != size:
            raise DataError(f"reference {table}.weight has {src.shape[0]} rows; the model's {kind} table has {size}")
        weight[o:o + size] = block
    out: dict[str, Tensor] = {"embedding.weight": weight}
    for ref_name, ours in LAYERS[cls].items():
        for key, value in ref_state.items():
            if not key.startswith(ref_name + "."):
                continue
            rest = key[len(ref_name) + 1:]
            value = value.detach()
            if rest.endswith("weight") and f"{ref_name}.{rest.split('.')[0]}" in REQUEST_FIRST_LAYERS:
                value = _permute_request_blocks(value, dim)
            out[f"{ours}.{rest}"] = value
    return out


def load_reference(model: nn.Module, ref_state: Mapping[str, Tensor]) -> nn.Module:
    """Load reference parameters into ``model`` (strict: every parameter of the model must be covered)."""
    state = convert_state_dict(ref_state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"reference parameters do not fit the {type(model).__name__}: missing {missing}, "
                        f"unexpected {unexpected}")
    return model


def reference_batch(inputs: Mapping[str, np.ndarray], groups: Sequence[str], slot_mask: np.ndarray,
                    reference_quirks: bool) -> dict[str, Tensor]:
    """The reference's forward inputs (its names, see models.json ``input_layout``) as a model batch.

    Reference mode keeps the reference's ids (cat1 raw, padding slots' cat1 2, padded steps
    0). Default mode converts them to this project's conventions: cat1 + 1 at valid steps
    and filled slots, and every field 0 at padded steps and padding slots.
    ``slot_mask`` [B, N]: 1 = filled slot (not a reference forward input).
    """
    def arr(name: str) -> np.ndarray:
        if name not in inputs:
            raise DataError(f"reference inputs lack {name!r}")
        return np.asarray(inputs[name], dtype=np.int64)

    context = np.stack([arr("request_wday"), arr("request_hour"), arr("request_min")], 1)
    user = np.stack([arr("uid"), arr("did"), arr("age"), arr("gender"), arr("province")], 1)
    seq = arr("seq_arr").copy()
    seq_mask = arr("seq_mask")
    items = np.concatenate([arr(f"{g}_photos") for g in groups], 1).copy()
    slot_mask = np.asarray(slot_mask).astype(bool)
    if items.shape[:2] != slot_mask.shape:
        raise DataError(f"slot_mask has shape {slot_mask.shape}, the candidates {items.shape[:2]}")
    if not reference_quirks:
        c = fields.SEQ_FIELDS.index(CAT1)
        seq[..., c] += 1
        seq *= (seq_mask > 0)[..., None]
        items[..., c] += 1
        items *= slot_mask[..., None]
    return {"context": torch.from_numpy(context), "user": torch.from_numpy(user), "seq": torch.from_numpy(seq),
            "seq_mask": torch.from_numpy(seq_mask), "items": torch.from_numpy(items)}
