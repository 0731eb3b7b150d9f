"""The preprocess step: staged RecFlow days -> shards of one cascade setting.

Cached by KFP on (the staged artifact's identity, stages, setting overrides, time zone,
missing-request tolerance): every run over the same data and setting shares one shard set.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def preprocess(
    raw_data: Input[Dataset],
    stages: int,
    setting: dict,
    tz_offset_hours: int,
    max_missing_fraction: float,
    shards: Output[Dataset],
    reference_quirks: bool = False,
):
    """Shards of the built-in setting with ``stages`` stages; ``setting`` overrides its fields (e.g. quotas).
    ``reference_quirks``: the published experiments' feature conventions (docs/reference.md)."""
    from lcron.data.shards import preprocess as build_shards
    from lcron.settings import Setting, get_setting

    base = get_setting(stages=stages)
    chosen = Setting.from_dict({"base": base.name, **setting}) if setting else base
    shard_set = build_shards(raw_data.path, shards.path, chosen, tz_offset_hours=tz_offset_hours,
                             max_missing_fraction=max_missing_fraction, overwrite=True,
                             reference_quirks=reference_quirks)
    shards.metadata["setting"] = shard_set.setting.name
    shards.metadata["stages"] = shard_set.setting.num_stages
    shards.metadata["days"] = shard_set.days
    shards.metadata["fingerprint"] = shard_set.fingerprint()
    shards.metadata["reference_quirks"] = shard_set.reference_quirks
