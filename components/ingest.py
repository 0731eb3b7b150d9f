"""The fingerprint and ingest steps: which data, checked, and a reference to it (or a copy).

``fingerprint`` is tiny and never cached: it reads only file metadata (gs://) or hashes
the chosen files (local folder) or the generator parameters (synthetic) and outputs a
string. ``ingest`` takes that string as a parameter, so KFP's cache key of ingest
changes exactly when the data changes; with unchanged data every run hits the cache and
reuses the same ingest artifact (and so the same cached preprocess downstream). The
artifact is ``ingest.json`` alone - a reference to the source that preprocessing follows -
unless ``copy`` is true (then it holds a copy of the chosen files; the synthetic source is
always copied): a RecFlow-size source is read where it is instead of being duplicated into
the pipeline root.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.common import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def fingerprint(
    source: str,
    days: str,
    synthetic_days: int,
    synthetic_start_date: str,
    synthetic_requests_per_day: int,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_seed: int,
) -> str:
    """Fingerprint of the chosen days of ``source`` (a folder, gs://bucket/prefix or "synthetic")."""
    from lcron.data.step_configs import SourceConfig
    from lcron.ingest import source_fingerprint

    synthetic = SourceConfig(synthetic_days=synthetic_days, synthetic_start_date=synthetic_start_date,
                             synthetic_requests_per_day=synthetic_requests_per_day, synthetic_users=synthetic_users,
                             synthetic_items=synthetic_items, synthetic_seed=synthetic_seed).synthetic()
    return source_fingerprint(source, days or None, synthetic=synthetic)


@dsl.component(**COMPONENT_OPTIONS)
def ingest(
    source: str,
    days: str,
    fingerprint: str,
    synthetic_days: int,
    synthetic_start_date: str,
    synthetic_requests_per_day: int,
    synthetic_users: int,
    synthetic_items: int,
    synthetic_seed: int,
    raw_data: Output[Dataset],
    copy: bool = False,
):
    """Check the chosen days and reference them in ``raw_data`` (``copy``: stage a copy there);
    fail if they no longer match ``fingerprint``."""
    from lcron.data.step_configs import SourceConfig
    from lcron.ingest import ingest as stage

    synthetic = SourceConfig(synthetic_days=synthetic_days, synthetic_start_date=synthetic_start_date,
                             synthetic_requests_per_day=synthetic_requests_per_day, synthetic_users=synthetic_users,
                             synthetic_items=synthetic_items, synthetic_seed=synthetic_seed).synthetic()
    # The artifact folder belongs to this execution: leftovers of a failed attempt are replaced.
    staged = stage(source, raw_data.path, days=days or None, synthetic=synthetic,
                   expected_fingerprint=fingerprint or None, copy=copy, overwrite=True)
    raw_data.metadata["source"] = staged.source
    raw_data.metadata["days"] = staged.days
    raw_data.metadata["fingerprint"] = staged.fingerprint
    raw_data.metadata["mode"] = staged.mode
