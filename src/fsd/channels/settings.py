"""Channel configuration from flags and the environment, the same for the CLI and the functions.

Flags win over environment variables. Secrets come only from the environment (or files that
platforms mount, read by the functions), never from flags, so they stay out of shell history and
process listings.

============================  ============================================================
``FSD_NATS_URL``              NATS server URL(s), comma-separated; may embed user:password
``FSD_NATS_CREDS``            path of a NATS ``.creds`` file (JWT + NKey seed)
``FSD_NATS_TOKEN``            NATS token
``FSD_NATS_USER``             NATS user (with ``FSD_NATS_PASSWORD``)
``FSD_S3_ENDPOINT``           S3 endpoint URL, e.g. ``https://s3.amazonaws.com``; when absent,
                              ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL`` (as every AWS
                              SDK and tool reads them; off with
                              ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``)
``FSD_S3_BUCKET``             bucket for activations (default ``fsd``; created if missing)
``AWS_ACCESS_KEY_ID``         S3 access key
``AWS_SECRET_ACCESS_KEY``     S3 secret key
``AWS_REGION``                S3 region (default ``us-east-1``)
``AWS_ENDPOINT_URL_SQS``      sqs/sns: the endpoint of SQS (and SNS: ``AWS_ENDPOINT_URL_SNS``),
                              then ``AWS_ENDPOINT_URL``, as the AWS SDKs read them; absent:
                              AWS itself when credentials are configured, else ``fsd run``
                              starts an embedded ``moto_server``
``FSD_AWS_PREFIX``            sqs/sns: the deployment's prefix for queue and topic names
                              (default ``fsd``); credentials come from boto3's own chain
                              (environment, shared files, the function's role)
``FSD_RUN_KEY``               deployment secret that authenticates frames and invocations
                              (at least 32 characters; ``fsd run`` makes its own per run)
============================  ============================================================

Addresses are checked here, before any connection, with the rules of :mod:`fsd.urls`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from fsd.auth import load_secret
from fsd.channels.base import ChannelConfig
from fsd.errors import AuthError, InputError
from fsd.urls import check_nats_url, check_s3_endpoint


def channel_config(
    kind: str,
    *,
    nats_url: str | None = None,
    s3_endpoint: str | None = None,
    s3_bucket: str | None = None,
    env: Mapping[str, str] | None = None,
    base: ChannelConfig | None = None,
) -> ChannelConfig:
    """The configuration for ``kind``; an empty address means "start an embedded server"."""
    env = os.environ if env is None else env
    cfg = dataclasses.replace(base or ChannelConfig(), kind=kind)
    if env.get("FSD_RUN_KEY"):
        try:
            cfg = dataclasses.replace(cfg, secret=load_secret(env["FSD_RUN_KEY"]))
        except AuthError as exc:
            raise InputError(str(exc)) from None
    if kind == "nats":
        creds = env.get("FSD_NATS_CREDS", "")
        if creds and not os.path.isfile(creds):
            raise InputError(f"FSD_NATS_CREDS names a file that does not exist: {creds}")
        address = nats_url or env.get("FSD_NATS_URL", "")
        if address:
            check_nats_url(address, "--nats-url" if nats_url else "FSD_NATS_URL")
        return dataclasses.replace(
            cfg,
            address=address,
            creds_file=creds,
            token=env.get("FSD_NATS_TOKEN", ""),
            user=env.get("FSD_NATS_USER", ""),
            password=env.get("FSD_NATS_PASSWORD", ""),
        )
    if kind == "s3":
        bucket = s3_bucket or env.get("FSD_S3_BUCKET", "") or cfg.bucket
        if not 3 <= len(bucket) <= 63 or not bucket.replace("-", "").replace(".", "").isalnum():
            raise InputError(f"invalid S3 bucket name {bucket!r}")
        if bucket != bucket.lower():
            raise InputError(f"S3 bucket names are lower case: {bucket!r}")
        source, endpoint = s3_endpoint_setting(s3_endpoint, env)
        if endpoint:
            check_s3_endpoint(endpoint, source)
        return dataclasses.replace(
            cfg,
            address=endpoint,
            bucket=bucket,
            region=env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", "") or cfg.region,
            access_key=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
        )
    if kind in ("sqs", "sns"):
        source, endpoint = aws_endpoint_setting(kind, env)
        if endpoint:
            check_s3_endpoint(endpoint, source)
        return dataclasses.replace(
            cfg,
            address=endpoint,
            namespace=env.get("FSD_AWS_PREFIX", "") or cfg.namespace,
            region=env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", "") or cfg.region,
        )
    return cfg


#: What tells boto3 where credentials are, besides instance metadata (which a laptop lacks
#: and asking for costs seconds): https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html
AWS_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def aws_credentials_configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether boto3 would find AWS credentials without asking instance metadata."""
    env = os.environ if env is None else env
    if any(env.get(name) for name in AWS_CREDENTIAL_VARS):
        return True
    home = os.path.expanduser("~")
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
        env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"),
    )
    return any(os.path.isfile(f) for f in files)


def aws_endpoint_setting(kind: str, env: Mapping[str, str]) -> tuple[str, str]:
    """``(variable, endpoint)`` for the sqs/sns channels; ``("", "")``: AWS's own endpoints."""
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return "", ""
    for name in (f"AWS_ENDPOINT_URL_{kind.upper()}", "AWS_ENDPOINT_URL"):
        value = env.get(name, "")
        if value:
            return name, value
    return "", ""


#: Where the S3 endpoint comes from when no flag names it, first found wins: fsd's own variable,
#: then the AWS SDKs' service-specific and global ones, in the SDKs' own order
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html).
S3_ENDPOINT_VARS = ("FSD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint_setting(flag: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """``(where it came from, endpoint)``; ``("", "")`` when nothing names one.

    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` makes the AWS variables ignored, as in the SDKs.
    """
    if flag:
        return "--s3-endpoint", flag
    ignore_aws = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true"
    for name in S3_ENDPOINT_VARS:
        if ignore_aws and name.startswith("AWS_"):
            break
        value = env.get(name, "")
        if value:
            return name, value
    return "", ""
