"""Code packages in S3 (any S3 endpoint: AWS, MinIO, moto): cluster mode's BlobStore.

Keys are ``packages/<digest>.zip``, so a package is written once and never changes: the digest is
the sha256 of its bytes. Writes send ``ChecksumSHA256`` so the endpoint itself rejects a body that
was damaged on the way; reads verify the digest again, because not every S3-compatible endpoint
checks (and a corrupted package must never reach a node). Workers do not get S3 credentials: the
scheduler hands them a presigned GET URL with a short lifetime (:meth:`presigned_url`).

This is the only module that imports boto3.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from appliance.core.errors import ApplianceError, CodeNotFound

log = logging.getLogger("appliance.s3")

#: Every package lives under this prefix, as <digest>.zip.
KEY_PREFIX = "packages/"


class BlobStoreUnavailable(ApplianceError):
    """The object store did not answer or refused us (credentials, bucket)."""

    code = "CodeStore.Unavailable"
    status = 503
    retry_after = 2


class S3BlobStore:
    """BlobStore over one bucket. Thread-safe: boto3 clients may be shared between threads."""

    def __init__(self, *, bucket: str, endpoint_url: str | None = None, region: str = "us-east-1",
                 access_key: str | None = None, secret_key: str | None = None,
                 connect_timeout_s: float = 3.0, read_timeout_s: float = 30.0, max_attempts: int = 4):
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        cfg = Config(region_name=region, signature_version="s3v4",
                     s3={"addressing_style": "path"},  # MinIO and other self-hosted endpoints
                     retries={"mode": "standard", "max_attempts": max_attempts},
                     connect_timeout=connect_timeout_s, read_timeout=read_timeout_s)
        # Credentials: explicit settings first, else boto3's chain (env, profile, instance role).
        kwargs = {}
        if access_key and secret_key:
            kwargs = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self._s3 = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=cfg, **kwargs)

    @classmethod
    def from_settings(cls, settings) -> S3BlobStore:
        return cls(bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint or None, region=settings.s3_region,
                   access_key=settings.s3_access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
                   secret_key=settings.s3_secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"))

    @staticmethod
    def key(digest: str) -> str:
        return f"{KEY_PREFIX}{digest}.zip"

    def _fail(self, what: str, exc: Exception) -> ApplianceError:
        where = self.endpoint_url or "AWS S3"
        return BlobStoreUnavailable(f"S3 {what} failed on bucket {self.bucket!r} at {where}: {exc}")

    # -- BlobStore port -------------------------------------------------------------------

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; True when it was created now."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._fail("head_bucket", exc) from None
        except BotoCoreError as exc:
            raise self._fail("head_bucket", exc) from None
        try:
            self._s3.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail("create_bucket", exc) from None
        except BotoCoreError as exc:
            raise self._fail("create_bucket", exc) from None
        log.info("event=bucket_created bucket=%s endpoint=%s", self.bucket, self.endpoint_url or "aws")
        return True

    def put(self, digest: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"data does not hash to {digest}")
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.key(digest), Body=data, ChecksumSHA256=checksum,
                                ContentType="application/zip")
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("put", exc) from None

    def get(self, digest: str) -> bytes:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self.key(digest))
            data = obj["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise CodeNotFound(f"code package {digest} is not in bucket {self.bucket!r}") from None
            raise self._fail("get", exc) from None
        except BotoCoreError as exc:
            raise self._fail("get", exc) from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise self._fail("get", ValueError(f"object {self.key(digest)} does not match its sha256; refusing it"))
        return data

    def exists(self, digest: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self.key(digest))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("head", exc) from None
        except BotoCoreError as exc:
            raise self._fail("head", exc) from None

    def delete(self, digest: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.key(digest))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", exc) from None

    # -- for workers ------------------------------------------------------------------------

    def presigned_url(self, digest: str, ttl_s: int = 900) -> str:
        """A GET URL for one package that works without credentials for ``ttl_s`` seconds."""
        return self._s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(digest)},
                                               ExpiresIn=int(ttl_s))

    def check(self) -> str:
        """For ``faas doctor``: raises when the bucket cannot be reached."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("head_bucket", exc) from None
        return f"bucket {self.bucket} at {self.endpoint_url or 'AWS S3'}"
