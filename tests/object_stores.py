"""Loopback object stores for tests: moto's S3 server and the GCS emulator, each with the
environment the project's clients read pointed at it (lcron/data/source.py)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest


@contextlib.contextmanager
def moto_s3(port: int, bucket: str) -> Iterator[str]:
    """moto's S3 server on ``port`` with ``bucket`` made; AWS_ENDPOINT_URL and test
    credentials set (AWS_PROFILE unset) until the block ends. Yields the endpoint."""
    from moto.server import ThreadedMotoServer

    mp = pytest.MonkeyPatch()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(key, value)
        mp.delenv("AWS_PROFILE", raising=False)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
        mp.undo()


@contextlib.contextmanager
def gcs_emulator(port: int, bucket: str) -> Iterator[int]:
    """A gcp-storage-emulator on ``port`` holding ``bucket``; STORAGE_EMULATOR_HOST set until
    the block ends. Yields the port."""
    from gcp_storage_emulator.server import create_server

    mp = pytest.MonkeyPatch()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        yield port
    finally:
        server.stop()
        mp.undo()
