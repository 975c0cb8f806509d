"""One way to reach an S3-compatible store, shared by the S3 channel, the model store and the
operator: the settings both read (endpoint, bucket, keys, region), a minio client with explicit
timeouts and pool size, and prefix deletion."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Protocol

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject

from fsd import settings
from fsd.errors import InputError
from fsd.settings import Variable
from fsd.urls import check_endpoint

#: Where the S3 endpoint comes from when no flag names it, first found wins: fsd's own variable,
#: then the AWS SDKs' service-specific and global ones, in the SDKs' own order
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html).
S3_ENDPOINT_VARS = ("FSD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")

S3_ENDPOINT_HELP = (
    "S3 endpoint URL (else env FSD_S3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL{})"
)

#: What an S3 store reads, whoever reads it (the ``s3`` transport, the model store)
S3_VARIABLES = (
    Variable(
        "FSD_S3_ENDPOINT",
        "S3 endpoint URL, e.g. https://s3.amazonaws.com; when absent, AWS_ENDPOINT_URL_S3, then "
        "AWS_ENDPOINT_URL (as every AWS SDK reads them; off with "
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true)",
        flag="--s3-endpoint",
        flag_help=S3_ENDPOINT_HELP.format("; none: embedded"),
    ),
    Variable(
        "AWS_ENDPOINT_URL_S3", "the S3 endpoint as the AWS SDKs read it (else AWS_ENDPOINT_URL)"
    ),
    Variable(
        "FSD_S3_BUCKET",
        "bucket for activations and models (created if missing)",
        default=settings.BUCKET,
        flag="--s3-bucket",
        flag_help=f"S3 bucket (else env FSD_S3_BUCKET, else {settings.BUCKET})",
    ),
    Variable(
        "FSD_S3_ACCESS_KEY_ID",
        "S3 access key (never AWS_ACCESS_KEY_ID, which every AWS client would take)",
        secret=True,
        secret_file="fsd-s3-access-key",
    ),
    Variable(
        "FSD_S3_SECRET_ACCESS_KEY", "S3 secret key", secret=True, secret_file="fsd-s3-secret-key"
    ),
    Variable("AWS_ACCESS_KEY_ID", "S3 access key without FSD_S3_ACCESS_KEY_ID", secret=True),
    Variable("AWS_SECRET_ACCESS_KEY", "S3 secret key with AWS_ACCESS_KEY_ID", secret=True),
    Variable("AWS_SESSION_TOKEN", "the session token of temporary keys (a role's)", secret=True),
    Variable(
        "AWS_REGION",
        "the region (else AWS_DEFAULT_REGION, as the AWS SDKs read it)",
        default=settings.REGION,
    ),
)


def s3_endpoint_setting(flag: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """``(where it came from, endpoint)``; ``("", "")`` when nothing names one.

    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` makes the AWS variables ignored, as in the SDKs.
    """
    if flag:
        return "--s3-endpoint", flag
    ignore_aws = settings.aws_endpoints_ignored(env)
    for name in S3_ENDPOINT_VARS:
        if ignore_aws and name.startswith("AWS_"):
            break
        value = settings.text(env, name)
        if value:
            return name, value
    return "", ""


def s3_endpoint(flag: str | None, env: Mapping[str, str]) -> str:
    """The endpoint a flag or the environment names, checked; ``""`` when none does."""
    source, endpoint = s3_endpoint_setting(flag, env)
    if endpoint:
        check_endpoint(endpoint, source)
    return endpoint


def s3_bucket(flag: str | None, env: Mapping[str, str], default: str = settings.BUCKET) -> str:
    """The bucket a flag or ``FSD_S3_BUCKET`` names (else ``default``), checked."""
    bucket = flag or settings.text(env, "FSD_S3_BUCKET") or default
    if not 3 <= len(bucket) <= 63 or not bucket.replace("-", "").replace(".", "").isalnum():
        raise InputError(f"invalid S3 bucket name {bucket!r}")
    if bucket != bucket.lower():
        raise InputError(f"S3 bucket names are lower case: {bucket!r}")
    return bucket


def s3_keys(env: Mapping[str, str]) -> tuple[str, str, str]:
    """The store's (access key, secret key, session token): its own
    (``FSD_S3_ACCESS_KEY_ID``/``FSD_S3_SECRET_ACCESS_KEY``, what the ``fsd-s3-*`` secret files
    set), else the AWS SDKs' variables.

    The S3 keys a function mounts stay S3's: they are never ``AWS_ACCESS_KEY_ID``, which every
    AWS client in the process (SQS, SNS, Lambda) would take as its credentials too.
    """
    own = settings.text(env, "FSD_S3_ACCESS_KEY_ID")
    if own:
        return own, settings.text(env, "FSD_S3_SECRET_ACCESS_KEY"), ""
    return (
        settings.text(env, "AWS_ACCESS_KEY_ID"),
        settings.text(env, "AWS_SECRET_ACCESS_KEY"),
        settings.text(env, "AWS_SESSION_TOKEN"),
    )


class S3Keys(Protocol):
    """How to sign in to a store (the s3 transport's options, the model store's config)."""

    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def session_token(self) -> str: ...
    @property
    def region(self) -> str: ...


def s3_secret_env(keys: S3Keys) -> dict[str, str]:
    """The variables that make :func:`s3_keys` read ``keys`` back (a local stack hands them to
    its functions): the store's own, or the AWS SDKs' when there is a session token."""
    if keys.session_token:
        return {
            "AWS_ACCESS_KEY_ID": keys.access_key,
            "AWS_SECRET_ACCESS_KEY": keys.secret_key,
            "AWS_SESSION_TOKEN": keys.session_token,
        }
    own = {"FSD_S3_ACCESS_KEY_ID": keys.access_key, "FSD_S3_SECRET_ACCESS_KEY": keys.secret_key}
    return {k: v for k, v in own.items() if v}


def minio_client(
    endpoint: str,
    keys: S3Keys,
    *,
    connect_timeout: float,
    read_timeout: float,
    maxsize: int,
    retries: urllib3.Retry,
    error: type[Exception],
) -> tuple[Minio, str]:
    """A minio client for ``endpoint``, and the endpoint as a loggable URL; ``error`` (the
    caller's: a transport's or the store's) for an endpoint that is not one."""
    try:
        parts = check_endpoint(endpoint, "s3 endpoint")
    except InputError as exc:  # a config made without reading settings: refused all the same
        raise error(str(exc)) from None
    where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=maxsize,
        retries=retries,
    )
    client = Minio(
        parts.netloc,
        access_key=keys.access_key or None,
        secret_key=keys.secret_key or None,
        session_token=keys.session_token or None,
        secure=parts.scheme == "https",
        region=keys.region,
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
