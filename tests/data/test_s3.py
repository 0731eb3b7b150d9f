"""s3:// sources against a real S3-compatible server (moto's server mode) on loopback:
the same shards as the local copy, validate and a clear message for each user mistake."""

from __future__ import annotations

import pytest

from lcron.data.shards import preprocess
from lcron.data.source import S3Source, open_source
from lcron.data.validate import validate
from lcron.errors import DataError

from object_stores import moto_s3

from .shard_checks import assert_same_shards

BUCKET = "recflow-s3"


@pytest.fixture(scope="module")
def s3_server(free_port):
    """moto's S3 server on a free loopback port; AWS_ENDPOINT_URL and test credentials point at it."""
    with moto_s3(free_port(), BUCKET) as endpoint:
        yield endpoint


def _upload(root, prefix: str) -> str:
    import boto3

    client = boto3.client("s3")
    for p in sorted(root.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(root).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def test_s3_gives_identical_shards(s3_server, handmade, tmp_path):
    local = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    uri = _upload(local, "identical")
    s_local = preprocess(local, tmp_path / "local", 2, progress=False)
    s_s3 = preprocess(uri, tmp_path / "s3", 2, progress=False)
    assert s_local.days == ["2024-01-15", "2024-01-16"]
    assert_same_shards(s_local, s_s3)
    fp = s_s3.manifest("2024-01-15")["source_fingerprint"]["request_id_dict/2024-01-15.pkl"]
    assert set(fp) == {"size", "etag"} and len(fp["etag"]) == 32
    assert s_s3.source == uri


def test_s3_validate_and_listing(s3_server, handmade, tmp_path):
    root = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-17"))
    (root / "request_id_dict" / "2024-01-17.pkl").unlink()
    uri = _upload(root, "partial")
    src = open_source(uri)
    assert isinstance(src, S3Source) and src.list_days() == ["2024-01-15", "2024-01-17"]
    summaries = validate(uri)
    assert [s["ok"] for s in summaries] == [True, False]
    assert "request_id_dict/2024-01-17.pkl: file is missing" in summaries[1]["problems"][0]
    path = src.local_path("all_stage/2024-01-15.feather")
    assert path.read_bytes()[:6] == b"ARROW1"
    src.close()
    assert not path.exists()


def test_cli_validate_s3(s3_server, handmade, tmp_path, capsys):
    from lcron.cli import main

    uri = _upload(handmade.write(tmp_path / "recflow", days=("2024-01-15",)), "cli")
    assert main(["validate", "--source", uri]) == 0


def test_missing_bucket_names_the_bucket(s3_server):
    with pytest.raises(DataError, match="bucket no-such-bucket does not exist at this endpoint"):
        open_source("s3://no-such-bucket/x")


def test_wrong_credentials_name_the_variables(s3_server, monkeypatch):
    from moto import settings
    from moto.core.responses import ActionAuthenticatorMixin

    # moto checks credentials only with authentication switched on (no free unauthenticated calls).
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    with pytest.raises(DataError, match=r"wrong credentials or no rights\); check AWS_ACCESS_KEY_ID"):
        open_source(f"s3://{BUCKET}/x")


def test_unreachable_endpoint_names_the_variable(monkeypatch, free_port):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(DataError, match="cannot reach the S3 endpoint; set AWS_ENDPOINT_URL"):
        open_source("s3://bucket/x")


def test_bad_s3_uri():
    with pytest.raises(DataError, match="not an s3://bucket/prefix URI"):
        S3Source("s3://", client=object())


def test_pipeline_ingest_and_preprocess_from_s3_match_the_local_copy(s3_server, handmade, tmp_path):
    """The pipeline's fingerprint -> ingest -> preprocess path with an s3:// source."""
    from lcron.ingest import ingest, source_fingerprint

    local = handmade.write(tmp_path / "recflow", days=("2024-01-15", "2024-01-16"))
    uri = _upload(local, "pipeline")
    fp = source_fingerprint(uri, "2024-01-15:2024-01-16")
    staged = ingest(uri, tmp_path / "staged", days="2024-01-15:2024-01-16", expected_fingerprint=fp, progress=False)
    assert staged.fingerprint == fp
    s_local = preprocess(local, tmp_path / "local", 2, progress=False)
    s_staged = preprocess(tmp_path / "staged", tmp_path / "from-s3", 2, progress=False)
    assert_same_shards(s_local, s_staged)
