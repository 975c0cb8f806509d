"""Credentials out of every message: URLs may embed ``user:password@`` and must never be echoed."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# scheme://userinfo@ anywhere in a text; userinfo stops at whitespace, '/', or the last '@'
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]*@")
# user:password@ without a scheme in front (an endpoint written "KEY:SECRET@host:9000")
_BARE_USERINFO = re.compile(r"(?<![\w/*])[^\s/@'\"(),:]+:[^\s/@'\"(),]*@")


def redact(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) without user, password or token."""
    out = []
    for one in url.split(","):
        try:
            parts = urlsplit(one.strip())
            secret = parts.username or parts.password
            host, port = parts.hostname or "", parts.port
        except ValueError:  # not a URL we can parse (bad port, brackets): scrub it as text
            out.append(redact_text(one.strip()))
            continue
        if secret or "@" in parts.netloc:
            netloc = f"***@{host}" + (f":{port}" if port else "")
            parts = parts._replace(netloc=netloc)
        out.append(urlunsplit(parts))
    return ",".join(out)


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every URL in it (with a scheme or not) replaced by ``***``."""
    return _BARE_USERINFO.sub("***@", _USERINFO.sub(r"\1***@", text))
