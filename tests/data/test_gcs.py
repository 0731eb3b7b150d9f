"""gs:// sources through an in-process GCS emulator give the same shards as local files."""

from __future__ import annotations

import pytest

from lcron.data.recflow import RecFlowReader
from lcron.data.shards import preprocess
from lcron.data.source import GCSSource, LocalSource, open_source
from lcron.data.validate import validate
from lcron.errors import DataError

from object_stores import gcs_emulator

from .shard_checks import assert_same_shards

BUCKET = "recflow-test"


@pytest.fixture(scope="module")
def emulator(free_port):
    """A gcp-storage-emulator on a free loopback port; STORAGE_EMULATOR_HOST points at it."""
    with gcs_emulator(free_port(), BUCKET) as port:
        yield port


def _upload(root, prefix: str) -> str:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = storage.Client(project="test", credentials=AnonymousCredentials()).bucket(BUCKET)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            bucket.blob(f"{prefix}/{p.relative_to(root).as_posix()}").upload_from_filename(str(p))
    return f"gs://{BUCKET}/{prefix}"


def test_gcs_gives_identical_shards(emulator, handmade, tmp_path):
    local = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    uri = _upload(local, "identical")
    s_local = preprocess(local, tmp_path / "local", 2, progress=False)
    s_gcs = preprocess(uri, tmp_path / "gcs", 2, progress=False)
    assert s_local.days == ["2024-01-15", "2024-01-16"]
    assert_same_shards(s_local, s_gcs)
    fp = s_gcs.manifest("2024-01-15")["source_fingerprint"]["request_id_dict/2024-01-15.pkl"]
    assert set(fp) == {"size", "generation", "md5"} and fp["generation"] > 0
    assert s_gcs.source == uri


def test_gcs_idempotent_skip(emulator, handmade, tmp_path, caplog):
    uri = _upload(handmade.write(tmp_path / "recflow"), "skip")
    preprocess(uri, tmp_path / "s", 3, progress=False)
    with caplog.at_level("INFO", logger="lcron"):
        preprocess(uri, tmp_path / "s", 3, progress=False)
    assert "day 2024-01-15: up to date, skipped" in caplog.text


def test_gcs_source_listing_and_errors(emulator, handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-17"))
    (root / "request_id_dict" / "2024-01-17.pkl").unlink()
    uri = _upload(root, "partial")
    src = open_source(uri)
    assert isinstance(src, GCSSource) and src.list_days() == ["2024-01-15", "2024-01-17"]
    with pytest.raises(DataError, match=f"{uri}/request_id_dict/2024-01-17.pkl: file is missing"):
        RecFlowReader(uri).read_day("2024-01-17")
    summaries = validate(uri)
    assert [s["ok"] for s in summaries] == [True, False]
    assert "request_id_dict/2024-01-17.pkl: file is missing" in summaries[1]["problems"][0]
    with pytest.raises(DataError, match="no <YYYY-MM-DD>.feather files"):
        _ = RecFlowReader(f"gs://{BUCKET}/nothing-here").available_days


def test_gcs_cache_is_removed_on_close(emulator, handmade, tmp_path):
    uri = _upload(handmade.write(tmp_path / "recflow"), "cache")
    src = open_source(uri)
    path = src.local_path("all_stage/2024-01-15.feather")
    assert path.is_file() and path.read_bytes()[:6] == b"ARROW1"
    src.close()
    assert not path.exists()


def test_open_source_kinds(tmp_path):
    assert isinstance(open_source(tmp_path), LocalSource)
    with pytest.raises(DataError, match="unsupported source"):
        open_source("ftp://bucket/x")
    with pytest.raises(DataError, match="not a gs://bucket/prefix URI"):
        GCSSource("gs://", client=object())
