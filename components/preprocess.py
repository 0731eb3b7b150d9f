"""The preprocess step: staged RecFlow days -> shards of one cascade setting.

Cached by KFP on (the ingest artifact's identity, stages, setting overrides, time zone,
missing-request tolerance): every run over the same data and setting shares one shard set.
Where there is no cache (kfp.local), ``shared_root`` does that sharing: the shard set is
built once under that folder, keyed by ingest's fingerprint and the configuration, and
``shards`` holds a reference to it (lcron.data.shared_shards).
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
    shared_root: str = "",
):
    """Shards of the built-in setting with ``stages`` stages; ``setting`` overrides its fields (e.g. quotas).
    ``reference_quirks``: the published experiments' feature conventions (docs/reference.md).
    ``shared_root``: build the shard set there, once per data and configuration, and output a reference."""
    from lcron.data.shards import preprocess as build_shards
    from lcron.data.shared_shards import preprocess_shared, write_reference
    from lcron.settings import Setting, get_setting

    base = get_setting(stages=stages)
    chosen = Setting.from_dict({"base": base.name, **setting}) if setting else base
    options = {"tz_offset_hours": tz_offset_hours, "max_missing_fraction": max_missing_fraction,
               "reference_quirks": reference_quirks}
    if shared_root:
        shard_set = preprocess_shared(raw_data.path, shared_root, chosen, **options)
        write_reference(shards.path, shard_set)
        shards.metadata["shared"] = str(shard_set.root)
    else:
        shard_set = build_shards(raw_data.path, shards.path, chosen, overwrite=True, **options)
    shards.metadata["setting"] = shard_set.setting.name
    shards.metadata["stages"] = shard_set.setting.num_stages
    shards.metadata["days"] = shard_set.days
    shards.metadata["fingerprint"] = shard_set.fingerprint()
    shards.metadata["reference_quirks"] = shard_set.reference_quirks
