"""Channel configuration from flags and the environment, the same for the CLI and the functions.

Flags win over environment variables. Secrets come only from the environment (or files that
platforms mount, read by the functions), never from flags, so they stay out of shell history and
process listings.

============================  ============================================================
``FSD_NATS_URL``              NATS server URL(s), comma-separated; may embed user:password
``FSD_NATS_CREDS``            path of a NATS ``.creds`` file (JWT + NKey seed)
``FSD_NATS_TOKEN``            NATS token
``FSD_NATS_USER``             NATS user (with ``FSD_NATS_PASSWORD``)
``FSD_S3_ENDPOINT``           S3 endpoint URL, e.g. ``https://s3.amazonaws.com``
``FSD_S3_BUCKET``             bucket for activations (default ``fsd``; created if missing)
``AWS_ACCESS_KEY_ID``         S3 access key
``AWS_SECRET_ACCESS_KEY``     S3 secret key
``AWS_REGION``                S3 region (default ``us-east-1``)
``FSD_RUN_KEY``               deployment secret that authenticates frames and invocations
                              (at least 32 characters; ``fsd run`` makes its own per run)
============================  ============================================================

Addresses are checked here, before any connection: NATS URLs are ``nats``, ``tls``, ``ws`` or
``wss`` (``host:port`` alone means ``nats://``) and may embed ``user:password@``; the S3
endpoint is ``http(s)://host[:port]`` with no credentials (keys go in ``AWS_*``) and no path.
A bad address is an :class:`~fsd.errors.InputError` that shows scheme, host and port only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from fsd.auth import load_secret
from fsd.channels.base import ChannelConfig
from fsd.errors import AuthError, InputError

NATS_SCHEMES = ("nats", "tls", "ws", "wss")
S3_SCHEMES = ("http", "https")


def shown(url: str) -> str:
    """``url`` safe to print: scheme, host and port; userinfo, path and query never appear."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    text = netloc.rpartition("@")[2]
    if "@" in netloc:
        text = "***@" + text
    if len(netloc) < len(rest):
        text += "/..."
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text)
    return f"{scheme}://{text}" if sep else text


def _parse(url: str, source: str, default_scheme: str, schemes: tuple[str, ...]) -> SplitResult:
    """``url`` split, with a scheme from ``schemes``, a host and a valid port; else InputError."""
    if not url:
        raise InputError(f"{source} has an empty URL")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise InputError(f"{source} has spaces or control characters: {shown(url)}")
    full = url if "://" in url else f"{default_scheme}://{url}"
    try:
        parts = urlsplit(full)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number in 0..65535, unbalanced brackets
        raise InputError(f"{source} is not a valid URL: {shown(full)}") from None
    if parts.scheme not in schemes:
        raise InputError(
            f"{source} must use {', '.join(schemes)}, not {parts.scheme!r}: {shown(full)}"
        )
    if not host or port == 0:
        raise InputError(f"{source} needs a host and a port in 1..65535: {shown(full)}")
    return parts


def check_nats_url(address: str, source: str = "FSD_NATS_URL") -> None:
    """Every comma-separated URL of ``address`` a NATS server URL (userinfo allowed)."""
    for url in address.split(","):
        _parse(url.strip(), source, "nats", NATS_SCHEMES)


def check_s3_endpoint(address: str, source: str = "FSD_S3_ENDPOINT") -> None:
    """``address`` an S3 endpoint: http(s)://host[:port], no userinfo, path or query."""
    parts = _parse(address, source, "http", S3_SCHEMES)
    if "@" in parts.netloc:
        raise InputError(
            f"{source} must not hold credentials (put them in AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY): {shown(address)}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InputError(f"{source} must be http(s)://host[:port], nothing after: {shown(address)}")


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
        endpoint = s3_endpoint or env.get("FSD_S3_ENDPOINT", "")
        if endpoint:
            check_s3_endpoint(endpoint, "--s3-endpoint" if s3_endpoint else "FSD_S3_ENDPOINT")
        return dataclasses.replace(
            cfg,
            address=endpoint,
            bucket=bucket,
            region=env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", "") or cfg.region,
            access_key=env.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
        )
    return cfg
