"""The field layout shared by the shards, the models and the serving code.

Every id stored in a shard is ``raw id + 1`` so that 0 means padding in every field
(METHODS.md section 7). Time fields are ISO weekday 1-7, hour + 1 (1-24) and minute + 1
(1-60) in the data's time zone (UTC+8 by default); 0 is padding.

Per request, a shard day folder holds (R = requests, N = list size of the setting):

=============  ==============  ====================================================
array          shape           columns (in order)
=============  ==============  ====================================================
request_id     [R]             raw request id (int64, not shifted)
context        [R, 3]          CONTEXT_FIELDS
user           [R, 5]          USER_FIELDS
seq            [R, 50, 5]      SEQ_FIELDS (left-padded like RecFlow: valid steps last)
seq_mask       [R, 50]         1 where the step is a real view
items          [R, N, 8]       ITEM_FIELDS
mask           [R, N]          1 for a real candidate, 0 for padding
label          [R, N]          graded label y (0 on padding)
=============  ==============  ====================================================
"""

from __future__ import annotations

CONTEXT_FIELDS = ("weekday", "hour", "minute")
USER_FIELDS = ("user_id", "device_id", "age", "gender", "province")
SEQ_FIELDS = ("video_id", "author_id", "category_level_two", "category_level_one", "upload_type")
ITEM_ID_FIELDS = SEQ_FIELDS
ITEM_TIME_FIELDS = ("weekday", "hour", "minute")
ITEM_FIELDS = ITEM_ID_FIELDS + tuple(f"upload_{t}" for t in ITEM_TIME_FIELDS)
SEQ_LEN = 50

# Id fields that come with a vocabulary size in others/id_cnt.pkl; tables are sized count + 2.
ID_FIELDS = USER_FIELDS + ITEM_ID_FIELDS
# Time fields have fixed vocabularies (index 0 = padding).
TIME_VOCAB = {"weekday": 8, "hour": 25, "minute": 61}

# Which embedding table ("kind") each column of each array reads. Fields of the same kind
# share one table inside a model (the candidate's video id and the sequence's video ids, the
# request's weekday and the upload weekday, ...).
CONTEXT_KINDS = CONTEXT_FIELDS
USER_KINDS = USER_FIELDS
SEQ_KINDS = SEQ_FIELDS
ITEM_KINDS = ITEM_ID_FIELDS + ITEM_TIME_FIELDS

SHARD_ARRAYS = ("request_id", "context", "user", "seq", "seq_mask", "items", "mask", "label")
# What describes a request (a serving request carries exactly these), and the arrays a model
# reads: the request and its candidates (labels never reach a model).
REQUEST_INPUTS = ("context", "user", "seq", "seq_mask")
MODEL_INPUTS = REQUEST_INPUTS + ("items",)


def embedding_sizes(id_counts: dict[str, int]) -> dict[str, int]:
    """Embedding table size per kind: id fields count + 2 (shifted ids, 0 = padding), time fixed."""
    sizes = {k: int(id_counts[k]) + 2 for k in ID_FIELDS}
    sizes.update(TIME_VOCAB)
    return sizes
