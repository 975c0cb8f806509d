"""Addresses from configuration, checked before any connection and shown without credentials.

The CLI and the functions check them where they read them (:func:`fsd.channels.settings.
channel_config`), a client again where it connects, with the same rules. Each backend says what
its addresses are (its schemes, the scheme ``host:port`` alone means, its default ports:
:func:`server_urls`); an HTTP endpoint (:func:`check_endpoint`) is ``http(s)://host[:port]``
with no credentials (keys go in ``AWS_*``) and no path. A bad address is an
:class:`~fsd.errors.InputError` that shows scheme, host and port only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from fsd.errors import InputError

HTTP_SCHEMES = ("http", "https")


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


def parse(url: str, source: str, default_scheme: str, schemes: Sequence[str]) -> SplitResult:
    """``url`` split, with a scheme from ``schemes`` (``default_scheme`` when it names none), a
    host and a valid port; else InputError naming ``source``."""
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


def server_urls(
    address: str, source: str, schemes: Sequence[str], ports: Mapping[str, int]
) -> list[str]:
    """``address``'s comma-separated URLs (userinfo allowed), checked and made explicit:
    ``host:port`` gets the first of ``schemes``, a URL without a port the one ``ports`` gives
    its scheme (a scheme not in ``ports`` keeps none)."""
    servers = []
    for url in address.split(","):
        parts = parse(url.strip(), source, schemes[0], schemes)
        if parts.port is None and parts.scheme in ports:
            parts = parts._replace(netloc=f"{parts.netloc.rstrip(':')}:{ports[parts.scheme]}")
        servers.append(parts.geturl())
    return servers


def check_endpoint(address: str, source: str) -> SplitResult:
    """``address`` an HTTP endpoint, split: http(s)://host[:port], no userinfo, path or query."""
    parts = parse(address, source, "http", HTTP_SCHEMES)
    if "@" in parts.netloc:
        raise InputError(
            f"{source} must not hold credentials (put them in AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY): {shown(address)}"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InputError(f"{source} must be http(s)://host[:port], nothing after: {shown(address)}")
    return parts
