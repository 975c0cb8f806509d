"""Addresses from configuration, checked before any connection and shown without credentials.

The CLI and the functions check them where they read them (:func:`fsd.channels.settings.
channel_config`), the S3 client again where it connects, with the same rules: NATS URLs are
``nats``, ``tls``, ``ws`` or ``wss`` (``host:port`` alone means ``nats://``) and may embed
``user:password@``; an S3 endpoint is ``http(s)://host[:port]`` with no credentials (keys go in
``AWS_*``) and no path. A bad address is an :class:`~fsd.errors.InputError` that shows scheme,
host and port only.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from fsd.errors import InputError

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


NATS_PORT = 4222
"""NATS's client port: a ``nats`` or ``tls`` URL without a port means it."""


def check_nats_url(address: str, source: str = "FSD_NATS_URL") -> None:
    """Every comma-separated URL of ``address`` a NATS server URL (userinfo allowed)."""
    nats_servers(address, source)


def nats_servers(address: str, source: str = "FSD_NATS_URL") -> list[str]:
    """``address``'s comma-separated URLs, checked and made explicit, as the client is given
    them: ``host:port`` becomes ``nats://host:port``, a missing port NATS's 4222. (Some nats-py
    releases read a list's entries as full URLs: ``127.0.0.1:4222`` had no host for them, and
    the connection failed after its timeout instead of working.) Websocket and plain URLs are
    not mixed, which the client refuses too."""
    servers = []
    for url in address.split(","):
        parts = _parse(url.strip(), source, "nats", NATS_SCHEMES)
        if parts.port is None and parts.scheme in ("nats", "tls"):
            parts = parts._replace(netloc=f"{parts.netloc.rstrip(':')}:{NATS_PORT}")
        servers.append(parts.geturl())
    if len({url.startswith(("ws://", "wss://")) for url in servers}) > 1:
        raise InputError(f"{source} mixes websocket (ws, wss) and nats/tls URLs")
    return servers


def check_s3_endpoint(address: str, source: str = "FSD_S3_ENDPOINT") -> SplitResult:
    """``address`` an S3 endpoint, split: http(s)://host[:port], no userinfo, path or query."""
    parts = _parse(address, source, "http", S3_SCHEMES)
    if "@" in parts.netloc:
        raise InputError(
            f"{source} must not hold credentials (put them in AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY): {shown(address)}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InputError(f"{source} must be http(s)://host[:port], nothing after: {shown(address)}")
    return parts
