"""Machine-readable schemas of the RecFlow inputs and of the shard format.

The definitions below are the single source of truth. The JSON files in the repository's
``data_schemas/`` folder are generated from them (``python -m lcron.data.schemas
[OUT_DIR]``) and a test checks that the committed files match, so the JSON is there for
people and other tools while an installed package (which does not ship ``data_schemas/``)
still has the same schema in code. The reader (:mod:`lcron.data.recflow`) validates its
inputs against :data:`RECFLOW_SCHEMA` and the shard loader checks arrays against
:data:`SHARD_SCHEMA`.

Column ``check`` values of the all_stage table:

* ``id``: an integer id in ``[0, id_cnt[id_field])`` (the vocabulary of that field);
* ``flag``: 0 or 1;
* ``index``: a non-negative position;
* ``timestamp_ms`` / ``timestamp_s``: non-negative epoch time;
* ``integer``: any integer;
* ``any``: not checked at all (feedback columns may be null or float).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lcron.data import fields

RECFLOW_SCHEMA_VERSION = 1
SHARD_FORMAT_VERSION = 1

STAGE_LABELS = ("realshow", "rerank_pos", "rerank_neg", "rank_pos", "rank_neg", "coarse_neg", "prerank_neg")
# Stage label -> the all_stage column holding the position within that stage.
INDEX_COLUMNS = {"rank_pos": "rank_index", "rerank_pos": "rerank_index"}

REQUEST_COLUMNS = ("request_id", "user_id", "request_timestamp", "device_id", "age", "gender", "province")
FEEDBACK_COLUMNS = ("playing_time", "effective_view", "long_view", "like", "follow", "forward", "comment")


def _col(name: str, role: str, check: str, meaning: str, *, required: bool = True,
         id_field: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": "integer" if check != "any" else "any",
                         "required": required, "role": role, "check": check, "meaning": meaning}
    if id_field is not None:
        d["id_field"] = id_field
    return d


ALL_STAGE_COLUMNS: tuple[dict[str, Any], ...] = (
    _col("request_id", "request", "integer", "request key; joins the two pkl dicts"),
    _col("request_timestamp", "request", "timestamp_ms", "request time, ms since epoch"),
    _col("user_id", "user", "id", "user id (0-based)", id_field="user_id"),
    _col("device_id", "user", "id", "device id (0-based)", id_field="device_id"),
    _col("age", "user", "id", "age bucket (0-based)", id_field="age"),
    _col("gender", "user", "id", "gender (0-based)", id_field="gender"),
    _col("province", "user", "id", "province (0-based)", id_field="province"),
    _col("video_id", "item", "id", "candidate video id (0-based)", id_field="video_id"),
    _col("author_id", "item", "id", "author id (0-based)", id_field="author_id"),
    _col("category_level_one", "item", "id", "top-level category (0-based)", id_field="category_level_one"),
    _col("category_level_two", "item", "id", "second-level category (0-based)", id_field="category_level_two"),
    _col("upload_type", "item", "id", "upload type (0-based)", id_field="upload_type"),
    _col("upload_timestamp", "item", "timestamp_s", "upload time, s since epoch"),
    _col("duration", "item", "integer", "video length, ms"),
    *(_col(label, "stage", "flag", f"1 if the item is in stage group {label}") for label in STAGE_LABELS),
    {**_col("rank_index", "stage", "index", "position in the rank stage (meaningful where rank_pos == 1; "
            "0 = best)"), "checked_where": "rank_pos == 1", "null_allowed_elsewhere": True},
    {**_col("rerank_index", "stage", "index", "position in the rerank stage (meaningful where rerank_pos == 1; "
            "0 = best)"), "checked_where": "rerank_pos == 1", "null_allowed_elsewhere": True},
    *(_col(name, "feedback", "any", "user feedback, filled on realshow rows only; may be null or float",
           required=False) for name in FEEDBACK_COLUMNS),
)

REQUEST_ID_DICT_COLUMNS = ("video_id", "author_id", "duration", "category_level_two", "upload_type",
                           "upload_timestamp", "category_level_one", "effective_view")
# Columns of a request_id_dict row holding ids, with the id_cnt field they index.
REQUEST_ID_DICT_ID_COLUMNS = {"video_id": 0, "author_id": 1, "category_level_two": 3, "upload_type": 4,
                              "category_level_one": 6}
SEQ_COLUMNS = ("video_id", "author_id", "category_level_two", "category_level_one", "upload_type",
               "upload_timestamp", "duration_ms", "time_ms", "playing_time", "request_id")
SEQ_ID_COLUMNS = {"video_id": 0, "author_id": 1, "category_level_two": 2, "category_level_one": 3,
                  "upload_type": 4}
SEQ_TIME_COLUMN = 7

# Canonical id_cnt key -> spellings accepted in others/id_cnt.pkl (first match wins).
ID_CNT_SPELLINGS: dict[str, tuple[str, ...]] = {k: (k,) for k in fields.ID_FIELDS}
ID_CNT_SPELLINGS["video_id"] = ("video_id", "photo_id")
ID_CNT_SPELLINGS["category_level_two"] = ("category_level_two", " category_level_two")

LAYOUT = {
    "all_stage": "all_stage/{day}.feather",
    "request_id_dict": "request_id_dict/{day}.pkl",
    "seq_effective_50_dict": "seq_effective_50_dict/{day}.pkl",
    "id_cnt": "others/id_cnt.pkl",
}
DAY_FILES = ("all_stage", "request_id_dict", "seq_effective_50_dict")

RECFLOW_SCHEMA: dict[str, Any] = {
    "format": "recflow",
    "schema_version": RECFLOW_SCHEMA_VERSION,
    "layout": LAYOUT,
    "day_format": "YYYY-MM-DD",
    "all_stage": {
        "file_type": "feather (Arrow IPC v2)",
        "integer_widths": "any signed or unsigned integer type is accepted for kind 'integer'",
        "extra_columns": "ignored (a warning names them)",
        "columns": list(ALL_STAGE_COLUMNS),
        "requests": "distinct (" + ", ".join(REQUEST_COLUMNS) + ") rows; user columns constant within a request",
        "index_lookup": {label: {"flag": label, "index": col, "key": ["request_id", "video_id"]}
                         for label, col in INDEX_COLUMNS.items()},
    },
    "request_id_dict": {
        "file_type": "pickle",
        "value": "dict request_id -> dict(stage_label -> integer array [n, 8]); any label may be missing",
        "key_types": ["int", "numpy integer scalar"],
        "stage_labels": list(STAGE_LABELS),
        "row_shape": ["n", len(REQUEST_ID_DICT_COLUMNS)],
        "columns": list(REQUEST_ID_DICT_COLUMNS),
        "id_columns": REQUEST_ID_DICT_ID_COLUMNS,
        "candidates_per_label": "the first 10 stored rows, in stored order",
    },
    "seq_effective_50_dict": {
        "file_type": "pickle",
        "value": "dict request_id -> integer array [50, 10], left-padded with all-zero rows",
        "key_types": ["int", "numpy integer scalar"],
        "shape": [fields.SEQ_LEN, len(SEQ_COLUMNS)],
        "columns": list(SEQ_COLUMNS),
        "id_columns": SEQ_ID_COLUMNS,
        "valid_row": "time_ms > 0",
    },
    "id_cnt": {
        "file_type": "pickle",
        "value": "dict field name -> number of distinct ids (ids are 0 .. count - 1)",
        "keys": {k: list(v) for k, v in ID_CNT_SPELLINGS.items()},
    },
}

_N = "N"  # list size of the setting (10 slots per group)
SHARD_ARRAY_SCHEMA: dict[str, dict[str, Any]] = {
    "request_id": {"dtype": "int64", "shape": ["R"], "columns": None,
                   "meaning": "raw RecFlow request id (not shifted)"},
    "context": {"dtype": "integer", "shape": ["R", len(fields.CONTEXT_FIELDS)], "columns": list(fields.CONTEXT_FIELDS),
                "meaning": "request time: ISO weekday 1-7, hour + 1, minute + 1 in UTC+tz_offset_hours"},
    "user": {"dtype": "integer", "shape": ["R", len(fields.USER_FIELDS)], "columns": list(fields.USER_FIELDS),
             "meaning": "user features, raw id + 1"},
    "seq": {"dtype": "integer", "shape": ["R", fields.SEQ_LEN, len(fields.SEQ_FIELDS)],
            "columns": list(fields.SEQ_FIELDS),
            "meaning": "behaviour sequence, raw id + 1, left-padded (valid steps last), 0 on padded steps"},
    "seq_mask": {"dtype": "integer", "shape": ["R", fields.SEQ_LEN], "columns": None,
                 "meaning": "1 where the sequence step is a real view (time_ms > 0)"},
    "items": {"dtype": "integer", "shape": ["R", _N, len(fields.ITEM_FIELDS)], "columns": list(fields.ITEM_FIELDS),
              "meaning": "candidates, group g in slots [10g, 10g+10): raw id + 1, upload weekday/hour+1/minute+1; "
                         "0 on padding"},
    "mask": {"dtype": "integer", "shape": ["R", _N], "columns": None,
             "meaning": "1 for a real candidate, 0 for padding"},
    "label": {"dtype": "integer", "shape": ["R", _N], "columns": None,
              "meaning": "graded label: top_label_base - <top index> in the top group, the group's constant "
                         "elsewhere, 0 on padding"},
}
assert tuple(SHARD_ARRAY_SCHEMA) == fields.SHARD_ARRAYS

SHARD_SCHEMA: dict[str, Any] = {
    "format": "lcron-shards",
    "format_version": SHARD_FORMAT_VERSION,
    "symbols": {"R": "requests of the day", "N": "list size of the setting (10 x number of groups)"},
    "integer_dtypes": ["uint8", "int8", "int16", "int32", "int64"],
    "layout": {
        "dataset.json": "format_version, setting, id_counts, embedding_sizes, tz_offset_hours, source, days, "
                        "config_hash, reference_quirks (true: the reference's feature conventions, docs/reference.md)",
        "days/{day}/{array}.npy": "one .npy per array below",
        "days/{day}/manifest.json": "written last; its presence marks the day complete",
        "item_table/video_id.npy": "[I] shifted video ids, sorted ascending, unique",
        "item_table/features.npy": "[I, 8] ITEM_FIELDS of each item, latest seen by request time",
        "item_table/manifest.json": "written last",
    },
    "arrays": SHARD_ARRAY_SCHEMA,
    "item_table": {
        "video_id": {"dtype": "integer", "shape": ["I"], "meaning": "shifted video id, sorted ascending, unique"},
        "features": {"dtype": "integer", "shape": ["I", len(fields.ITEM_FIELDS)], "columns": list(fields.ITEM_FIELDS),
                     "meaning": "the item's ITEM_FIELDS as last seen (latest request time) over the processed days"},
    },
    "manifest_keys": ["format_version", "day", "setting", "requests", "requests_in_all_stage", "rows",
                      "dropped", "slot_fill_rate", "items_per_label", "arrays", "source_fingerprint",
                      "config_hash"],
}

SCHEMAS: dict[str, dict[str, Any]] = {"recflow.json": RECFLOW_SCHEMA, "shards.json": SHARD_SCHEMA}


def all_stage_columns(required_only: bool = True) -> list[dict[str, Any]]:
    """The all_stage column definitions (required ones only by default)."""
    return [c for c in ALL_STAGE_COLUMNS if c["required"] or not required_only]


def render(name: str) -> str:
    """The JSON text of schema ``name`` exactly as committed in ``data_schemas/``."""
    return json.dumps(SCHEMAS[name], indent=2) + "\n"


def write_schemas(out_dir: str | Path) -> list[Path]:
    """Write every schema as JSON into ``out_dir`` (the repository's ``data_schemas/``)."""
    from lcron.atomic import write_text

    out = Path(out_dir)
    paths = []
    for name in SCHEMAS:
        write_text(out / name, render(name))
        paths.append(out / name)
    return paths


def repo_schema_dir() -> Path:
    """``data_schemas/`` of a source checkout (it exists only there, not in an installed package)."""
    return Path(__file__).resolve().parents[2] / "data_schemas"


if __name__ == "__main__":  # python -m lcron.data.schemas [OUT_DIR]
    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else repo_schema_dir()):
        print(p)
