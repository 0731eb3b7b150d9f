"""Cascade settings as data.

A *setting* says everything that differs between a two-stage and a three-stage cascade
(or a user's own cascade): which stage groups fill the candidate list and in which slot
order, how graded labels are derived, which model each stage uses and how many items each
stage keeps. Losses, the trainer and the evaluation read this table; nothing else in the
library branches on the number of stages.

A user-defined setting is a JSON or YAML file with the same fields as :class:`Setting`,
for example a two-stage cascade that keeps 25 then 10 items::

    {"name": "two_stage_25_10", "base": "two_stage", "quotas": [25, 10]}

``base`` copies every field of a built-in setting; the other keys override it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

STAGE_GROUP_LABELS = ("rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg")
MODEL_KINDS = ("dssm", "din", "mlp")

#: Bounds on a setting's sizes: the shards hold [requests, groups x group_size, 8] arrays.
MAX_GROUP_SIZE = 1000
MAX_EXTRA_BYTES = 1 << 16


class SettingError(ValueError):
    """A setting (built-in name or user file) is unknown or inconsistent."""


# Fields (or per-stage lists) that hold integers; validate() rejects anything else.
INTEGER_FIELDS = ("quotas", "bce_groups", "group_size", "top_label_base", "gt_size")


def _integral(value: Any) -> Any:
    """``25.0`` -> ``25``; any other value unchanged (validation names what is wrong with it)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Setting:
    """One cascade configuration.

    Slots: group ``g`` occupies slots ``[g * group_size, (g + 1) * group_size)``; the first
    group is the top group, whose items are graded ``top_label_base - <top_index_column>``;
    every other group gets a constant label from ``group_labels``.
    """

    name: str
    groups: tuple[str, ...]
    top_index_column: str
    group_labels: Mapping[str, int]
    stage_names: tuple[str, ...]
    stage_models: tuple[str, ...]
    quotas: tuple[int, ...]
    # Per stage: how many leading groups the BCE baseline trains that stage on
    # (binary labels: top group 1, the rest 0).
    bce_groups: tuple[int, ...]
    # Per stage: the constant the ICC ensemble multiplies that stage's score with.
    icc_coefficients: tuple[float, ...]
    # LCRON's default label permutation: the reference used the soft one in its two-stage
    # experiments and the hard (thresholded) one in its three-stage experiments.
    lcron_hard_labels: bool = False
    # RankFlow's two ranking terms (earlier stage ranks what the next stage keeps above what
    # it drops): the reference used them in its three-stage experiments only.
    rankflow_ranking_terms: bool = False
    group_size: int = 10
    top_label_base: int = 30
    gt_size: int = 10
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    @property
    def list_size(self) -> int:
        """N, the number of candidate slots per request."""
        return len(self.groups) * self.group_size

    @property
    def top_group(self) -> str:
        return self.groups[0]

    def group_slice(self, group: str) -> slice:
        g = self.groups.index(group)
        return slice(g * self.group_size, (g + 1) * self.group_size)

    def bce_slots(self, stage: int) -> int:
        """Number of leading slots the BCE baseline trains stage ``stage`` on."""
        return self.bce_groups[stage] * self.group_size

    @property
    def reference_padding_labels(self) -> tuple[int, ...]:
        """The label the reference's data loader gives each slot when it is padding ``[N]``.

        Its loader fills a group's empty slots with the group's default position, which for
        the top group is position 0, so padding there is graded ``top_label_base`` (the best
        label a request can have); every other group's padding gets that group's label. Only
        losses reproducing a reference quirk that lets padding through read this."""
        per_group = [self.top_label_base] + [int(self.group_labels[g]) for g in self.groups[1:]]
        return tuple(label for label in per_group for _ in range(self.group_size))

    @property
    def icc_reference_cutoffs(self) -> tuple[int, ...]:
        """The reference ICC's cut-offs: the last stage reuses the previous stage's quota."""
        if self.num_stages < 2:
            return self.quotas
        return self.quotas[:-1] + (self.quotas[-2],)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise SettingError(f"setting {self.name!r}: {msg}")

        if not self.groups:
            fail("'groups' is empty")
        unknown = [g for g in self.groups if g not in STAGE_GROUP_LABELS]
        if unknown:
            fail(f"unknown group(s) {unknown}; known: {list(STAGE_GROUP_LABELS)}")
        if len(set(self.groups)) != len(self.groups):
            fail(f"'groups' repeats a group: {list(self.groups)}")
        if not self.top_group.endswith("_pos"):
            fail(f"the first group must be a *_pos group (graded by position), got {self.top_group!r}")
        if self.top_index_column != self.top_group.replace("_pos", "_index"):
            fail(f"'top_index_column' must be {self.top_group.replace('_pos', '_index')!r} for top group {self.top_group!r}")
        missing = [g for g in self.groups[1:] if g not in self.group_labels]
        if missing:
            fail(f"'group_labels' lacks a label for group(s) {missing}")
        s = len(self.stage_names)
        if s < 1:
            fail("at least one stage is needed")
        for key in ("stage_models", "quotas", "bce_groups", "icc_coefficients"):
            if len(getattr(self, key)) != s:
                fail(f"'{key}' has {len(getattr(self, key))} entries for {s} stages")
        bad_models = [m for m in self.stage_models if m not in MODEL_KINDS]
        if bad_models:
            fail(f"unknown model(s) {bad_models}; known: {list(MODEL_KINDS)}")
        if self.stage_models[0] != "dssm":
            fail("the first stage must be a two-tower 'dssm' model (it retrieves from the corpus)")
        if self.group_size < 1 or self.gt_size < 1:
            fail("'group_size' and 'gt_size' must be positive")
        if self.group_size > MAX_GROUP_SIZE:
            fail(f"'group_size' {self.group_size} is larger than {MAX_GROUP_SIZE} items per group (RecFlow logs 10)")
        try:
            extra_size = len(json.dumps(dict(self.extra)))
        except (TypeError, ValueError, RecursionError) as exc:
            fail(f"'extra' must be plain JSON data ({type(exc).__name__})")
        if extra_size > MAX_EXTRA_BYTES:
            fail(f"'extra' holds {extra_size} bytes of JSON; at most {MAX_EXTRA_BYTES} are accepted")
        if len(self.name) > 100 or not self.name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            fail("'name' must be 1-100 letters, digits, '_', '-' or '.'")
        n = self.list_size
        prev = n
        for i, q in enumerate(self.quotas):
            if not isinstance(q, int) or q < 1:
                fail(f"quota {q!r} of stage {self.stage_names[i]!r} must be a positive integer")
            if q > prev:
                fail(
                    f"quota {q} of stage {self.stage_names[i]!r} exceeds the {prev} items it receives "
                    f"(list size N = {n}, quotas {list(self.quotas)}); quotas must not increase and must fit N"
                )
            prev = q
        if self.quotas[-1] < self.gt_size and self.quotas[-1] < 1:
            fail("the last quota must be positive")
        for i, b in enumerate(self.bce_groups):
            if not 1 <= b <= len(self.groups):
                fail(f"'bce_groups' entry {b} of stage {self.stage_names[i]!r} must be in 1..{len(self.groups)}")
        if self.gt_size > n:
            fail(f"'gt_size' {self.gt_size} exceeds list size {n}")

    # -------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        d["group_labels"] = dict(self.group_labels)
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Setting":
        data = dict(data)
        base = data.pop("base", None)
        if base is not None:
            merged = get_setting(base).to_dict()
            merged.update(data)
            data = merged
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingError(f"setting: unknown field(s) {unknown}; known: {sorted(names)} (and 'base')")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise SettingError(f"setting {data.get('name', '?')!r}: missing field(s) {missing}")
        for k in ("groups", "stage_names", "stage_models", "quotas", "bce_groups", "icc_coefficients"):
            if not isinstance(data[k], (list, tuple)):
                raise SettingError(f"setting {data.get('name', '?')!r}: '{k}' must be a list, got {data[k]!r}")
            data[k] = tuple(data[k])
        if not isinstance(data["group_labels"], Mapping):
            raise SettingError(f"setting {data.get('name', '?')!r}: 'group_labels' must be a mapping")
        data["group_labels"] = {str(k): int(v) for k, v in data["group_labels"].items()}
        # JSON-like carriers (KFP's protobuf Struct under kfp.local, YAML written as 25.0) deliver
        # every number as a float: an integral float is the integer it spells.
        for k in INTEGER_FIELDS:
            if k in data:
                data[k] = tuple(_integral(v) for v in data[k]) if isinstance(data[k], tuple) else _integral(data[k])
        return cls(**data)


TWO_STAGE = Setting(
    name="two_stage",
    description="retrieval (DSSM) keeps 30 of 40, pre-rank (DIN) keeps 20",
    groups=("rank_pos", "rank_neg", "coarse_neg", "prerank_neg"),
    top_index_column="rank_index",
    group_labels={"rank_neg": 7, "coarse_neg": 6, "prerank_neg": 5},
    stage_names=("retrieval", "prerank"),
    stage_models=("dssm", "din"),
    quotas=(30, 20),
    bce_groups=(4, 2),
    icc_coefficients=(1.0, 1.0),
)

THREE_STAGE = Setting(
    name="three_stage",
    description="retrieval (DSSM) keeps 40 of 50, pre-rank (MLP) 30, rank (DIN) 20",
    groups=("rerank_pos", "rerank_neg", "rank_neg", "coarse_neg", "prerank_neg"),
    top_index_column="rerank_index",
    group_labels={"rerank_neg": 8, "rank_neg": 7, "coarse_neg": 6, "prerank_neg": 5},
    stage_names=("retrieval", "prerank", "rank"),
    stage_models=("dssm", "mlp", "din"),
    quotas=(40, 30, 20),
    bce_groups=(5, 4, 2),
    icc_coefficients=(1.0, 2.0, 4.0),
    lcron_hard_labels=True,
    rankflow_ranking_terms=True,
)

BUILTIN_SETTINGS: dict[str, Setting] = {TWO_STAGE.name: TWO_STAGE, THREE_STAGE.name: THREE_STAGE}
_BY_STAGES = {2: TWO_STAGE, 3: THREE_STAGE}


def get_setting(spec: "Setting | str | int | Path | None" = None, *, stages: int | None = None) -> Setting:
    """Resolve a setting from a Setting, a built-in name, a stage count (2 or 3) or a file path."""
    if isinstance(spec, Setting):
        return spec
    if spec is None:
        if stages is None:
            raise SettingError("give a setting (name or file) or a number of stages (2 or 3)")
        spec = stages
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        n = int(spec)
        if n not in _BY_STAGES:
            raise SettingError(f"no built-in setting with {n} stages; built-in: 2, 3 (or give a setting file)")
        return _BY_STAGES[n]
    if isinstance(spec, str) and spec in BUILTIN_SETTINGS:
        return BUILTIN_SETTINGS[spec]
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        return load_setting_file(path)
    raise SettingError(f"unknown setting {spec!r}; built-in: {sorted(BUILTIN_SETTINGS)}, or a .json/.yaml file")


#: A setting file is a few lines; anything larger is refused before it is parsed.
MAX_SETTING_FILE_BYTES = 1 << 20


def _parse_yaml(text: str) -> Any:
    """YAML without anchors and aliases: a setting has no use for them, and an alias bomb
    (nested aliases that expand exponentially once the setting is hashed or written) is the
    classic way to make a small YAML file exhaust memory."""
    import yaml

    class _NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                mark = event.start_mark
                raise yaml.YAMLError(f"anchors and aliases (&, *) are not accepted in a setting file (line "
                                     f"{mark.line + 1}, column {mark.column + 1})")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def load_setting_file(path: str | Path) -> Setting:
    """Load a user's setting from JSON or YAML; every problem is a SettingError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SettingError(f"setting file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SETTING_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingError(f"setting file {path} is not readable: {exc.strerror or exc}") from None
    if len(raw) > MAX_SETTING_FILE_BYTES:
        raise SettingError(f"setting file {path} is larger than {MAX_SETTING_FILE_BYTES} bytes; a setting is a few "
                           "lines of fields")
    kind = path.suffix.lstrip('.').upper() or "JSON"
    try:
        text = raw.decode("utf-8")
        data = _parse_yaml(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except Exception as exc:  # malformed file (including a nesting too deep to parse: RecursionError)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SettingError(f"setting file {path} is not valid {kind}: {first}") from None
    if not isinstance(data, Mapping):
        raise SettingError(f"setting file {path} must hold a mapping of fields, got {type(data).__name__}")
    try:
        return Setting.from_dict(data)
    except SettingError as exc:
        raise SettingError(f"setting file {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise SettingError(f"setting file {path}: {exc}") from None
