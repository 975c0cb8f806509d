"""One way to reach an S3-compatible store, shared by the S3 channel, the model store and the
operator: a minio client with explicit timeouts and pool size, and prefix deletion."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject

from fsd.errors import ChannelError, InputError
from fsd.urls import check_s3_endpoint


class S3Settings(Protocol):
    """Where the store is and how to sign in (an ``s3`` :class:`fsd.channels.ChannelConfig`)."""

    @property
    def address(self) -> str: ...
    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def session_token(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def connect_timeout(self) -> float: ...


def minio_client(
    config: S3Settings, *, read_timeout: float, maxsize: int, retries: urllib3.Retry
) -> tuple[Minio, str]:
    """A minio client for ``config``'s endpoint, and the endpoint as a loggable URL."""
    try:
        parts = check_s3_endpoint(config.address, "s3 endpoint")
    except InputError as exc:  # a config made without channel_config: refused all the same
        raise ChannelError(str(exc)) from None
    where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=read_timeout),
        maxsize=maxsize,
        retries=retries,
    )
    client = Minio(
        parts.netloc,
        access_key=config.access_key or None,
        secret_key=config.secret_key or None,
        session_token=config.session_token or None,
        secure=parts.scheme == "https",
        region=config.region,
        http_client=http,
    )
    return client, where


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^\"'()]+)")


def why(exc: BaseException) -> str:
    """A transport failure of the S3 client in a few words: ``connection refused``, not
    urllib3's "HTTPConnectionPool(...): Max retries exceeded with url: ... (Caused by ...)"."""
    reason = getattr(exc, "reason", None) or exc  # a MaxRetryError carries the last one
    text = str(reason)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip().lower()
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return "timed out"
    return f"{type(reason).__name__}: {text}"[:200]


def delete_prefix(
    client: Minio, bucket: str, prefix: str, *, last: Callable[[str], bool] | None = None
) -> tuple[int, list[str]]:
    """Delete every object under ``prefix`` (one LIST, DELETEs batched by 1000).

    Returns how many objects there were and "name: why" for each that could not be deleted;
    keys for which ``last`` is true are deleted after the others. Transport errors propagate.
    """
    keys = [
        o.object_name for o in client.list_objects(bucket, prefix, recursive=True) if o.object_name
    ]
    if last is not None:
        keys.sort(key=last)
    failed: list[str] = []
    for i in range(0, len(keys), 1000):
        batch = [DeleteObject(k) for k in keys[i : i + 1000]]
        failed += [f"{e.name}: {e.message}" for e in client.remove_objects(bucket, batch)]
    return len(keys), failed
