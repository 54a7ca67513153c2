"""S3BlobStore against moto's S3 server (a real process), with real boto3."""
from __future__ import annotations

import hashlib
import urllib.request

import boto3
import pytest
from helpers import free_port, moto_s3, package  # noqa: F401 - moto_s3 is a fixture

from appliance.backends.s3_blob import BlobStoreUnavailable, S3BlobStore
from appliance.core.errors import CodeNotFound


@pytest.fixture
def store(moto_s3, request):
    s = S3BlobStore(bucket=f"code-{request.node.name.replace('_', '-')[:40].lower()}", endpoint_url=moto_s3.url,
                    access_key="testing", secret_key="testing")
    assert s.ensure_bucket() is True
    return s


def test_roundtrip_and_idempotent_bucket(store):
    data = package("def handler(e, c):\n    return 1\n")
    digest = hashlib.sha256(data).hexdigest()
    assert store.exists(digest) is False
    store.put(digest, data)
    store.put(digest, data)  # idempotent
    assert store.exists(digest) is True
    assert store.get(digest) == data
    assert store.ensure_bucket() is False
    store.delete(digest)
    assert store.exists(digest) is False
    with pytest.raises(CodeNotFound):
        store.get(digest)


def test_keys_are_content_addressed(store, moto_s3):
    data = b"zip bytes"
    digest = hashlib.sha256(data).hexdigest()
    store.put(digest, data)
    s3 = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=store.bucket)["Contents"]]
    assert keys == [f"packages/{digest}.zip"]


def test_put_refuses_data_that_does_not_match_the_digest(store):
    with pytest.raises(ValueError):
        store.put("0" * 64, b"something else")


def test_get_verifies_the_digest(store, moto_s3):
    data = b"original"
    digest = hashlib.sha256(data).hexdigest()
    s3 = boto3.client("s3", endpoint_url=moto_s3.url, region_name="us-east-1")
    s3.put_object(Bucket=store.bucket, Key=f"packages/{digest}.zip", Body=b"tampered")
    with pytest.raises(BlobStoreUnavailable, match="does not match its sha256"):
        store.get(digest)


def test_presigned_url_needs_no_credentials(store):
    data = package("x = 1\n")
    digest = hashlib.sha256(data).hexdigest()
    store.put(digest, data)
    url = store.presigned_url(digest, 60)
    assert "Signature" in url or "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as r:  # plain HTTP, no AWS SDK, no keys
        assert r.read() == data


def test_unreachable_endpoint_is_a_clear_error():
    s = S3BlobStore(bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
                    connect_timeout_s=0.5, max_attempts=1)
    with pytest.raises(BlobStoreUnavailable, match="S3 get failed on bucket 'b'"):
        s.get("0" * 64)
