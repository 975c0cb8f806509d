"""The ``s3`` model store: models as objects in a bucket of any S3-compatible store (AWS S3,
MinIO, SeaweedFS, Ceph), through the minio client the ``s3`` transport uses too
(:mod:`fsd.s3client`). It reads the same variables as that transport, configured on its own.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

import urllib3
from minio.error import MinioException, S3Error

from fsd import settings
from fsd.errors import InputError, ModelFormatError, ModelNotFound, StoreError
from fsd.s3client import (
    S3_ENDPOINT_HELP,
    S3_VARIABLES,
    delete_prefix,
    minio_client,
    s3_bucket,
    s3_endpoint,
    s3_keys,
    s3_secret_env,
    why,
)
from fsd.settings import Variable
from fsd.stores import StoreBackend, StoreConfig

_FLAG_HELP = {
    "--s3-endpoint": S3_ENDPOINT_HELP.format(""),
    "--s3-bucket": f"bucket (else env FSD_S3_BUCKET, else {settings.BUCKET})",
}

#: Failures of a source listing or download that mean "check the keys", not "try later"
_REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")

#: What the S3 client raises when the store, not the request, failed
_FAILED = (MinioException, urllib3.exceptions.HTTPError, OSError)


def _retries(config: StoreConfig) -> urllib3.Retry:
    """A store blip is retried; a store that is down fails within a second or two."""
    if not config.endpoint:
        raise InputError("the model store needs an S3 endpoint (--s3-endpoint or FSD_S3_ENDPOINT)")
    return urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])


def _source_failure(exc: Exception) -> Exception:
    """What a source listing or download failed with, in the operator's words (it prefixes
    the source): a missing bucket is not found, anything else the store's failure."""
    if isinstance(exc, S3Error):
        if exc.code == "NoSuchBucket":
            return ModelNotFound("no such bucket")
        if exc.code in _REFUSED:
            return StoreError(f"access refused ({exc.code}): check the S3 keys")
        return StoreError(f"S3 error {exc.code}")
    return StoreError(f"S3 endpoint unreachable: {type(exc).__name__}")


class S3Objects(StoreBackend):
    """Objects in ``config.bucket`` on the S3 endpoint of ``config``."""

    VARIABLES: ClassVar[tuple[Variable, ...]] = tuple(
        dataclasses.replace(v, flag_help=_FLAG_HELP[v.flag]) if v.flag in _FLAG_HELP else v
        for v in S3_VARIABLES
    )
    EMBEDDED = "fsd.embedded.s3:store_server"
    LOGGERS = ("minio",)
    SCHEME = "s3"

    @classmethod
    def from_env(cls, env: Mapping[str, str], flags: Mapping[str, object]) -> StoreConfig:
        endpoint, bucket = flags.get("s3_endpoint"), flags.get("s3_bucket")
        checked_bucket = s3_bucket(bucket if isinstance(bucket, str) else None, env)
        where = s3_endpoint(endpoint if isinstance(endpoint, str) else None, env)
        access_key, secret_key, session_token = s3_keys(env)
        return StoreConfig(
            endpoint=where,
            bucket=checked_bucket,
            region=settings.aws_region(env),
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
        )

    @classmethod
    def to_env(cls, config: StoreConfig) -> dict[str, str]:
        return {"FSD_S3_ENDPOINT": config.endpoint, "FSD_S3_BUCKET": config.bucket}

    @classmethod
    def secret_env(cls, config: StoreConfig) -> dict[str, str]:
        return s3_secret_env(config)

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.client, self.where = minio_client(
            config.endpoint,
            config,
            connect_timeout=config.connect_timeout,
            maxsize=8,
            read_timeout=60.0,
            retries=_retries(config),
            error=StoreError,
        )
        self.bucket = config.bucket
        self._bucket_ready = False

    def prepare(self) -> None:
        if self._bucket_ready:
            return
        try:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket, location=self.config.region)
        except S3Error as exc:
            raise StoreError(
                f"model store at {self.where}: bucket {self.bucket}: {exc.code}"
            ) from None
        except _FAILED as exc:
            raise StoreError(f"model store at {self.where} unreachable: {why(exc)}") from None
        self._bucket_ready = True

    def write(self, key: str, data: bytes) -> None:
        """Put one object (the bucket is created on the first write if it does not exist)."""
        self.prepare()
        try:
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
        except _FAILED as exc:
            raise StoreError(
                f"model store at {self.where}: cannot write {key}: {why(exc)}"
            ) from None

    def read(self, key: str, limit: int | None = None) -> bytes:
        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ModelNotFound(f"model store has no {key}") from None
            raise StoreError(f"model store: cannot read {key}: {exc.code}") from None
        except _FAILED as exc:
            raise StoreError(
                f"model store at {self.where} unreachable reading {key}: {why(exc)}"
            ) from None
        try:
            data: bytes = resp.read() if limit is None else resp.read(limit + 1)
        finally:
            resp.close()
            resp.release_conn()
        if limit is not None and len(data) > limit:
            raise ModelFormatError(key, None, f"larger than {limit} bytes")
        return data

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        try:
            removed, failed = delete_prefix(self.client, self.bucket, prefix, last=last)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return 0
            raise StoreError(f"model store: cannot remove {prefix}: {exc.code}") from None
        except _FAILED as exc:
            raise StoreError(
                f"model store at {self.where} unreachable removing {prefix}: {why(exc)}"
            ) from None
        if failed:
            raise StoreError(f"model store: cannot remove {prefix}: {failed[0]}")
        return removed

    def list_folder(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        try:
            return [
                (obj.object_name or "", int(obj.size or 0))
                for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True)
            ]
        except _FAILED as exc:
            raise _source_failure(exc) from None

    def download(self, bucket: str, key: str, target: Path) -> None:
        try:
            self.client.fget_object(bucket, key, str(target))
        except _FAILED as exc:
            raise _source_failure(exc) from None
