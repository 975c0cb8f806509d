"""Credentials out of every message: URLs may embed ``user:password@`` and must never be echoed;
neither may a request header that carries a key (third-party debug logs print them)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

# scheme://userinfo@ anywhere in a text; userinfo stops at whitespace, '/', or the last '@'
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@]*@")
# user:password@ without a scheme in front (an endpoint written "KEY:SECRET@host:9000")
_BARE_USERINFO = re.compile(r"(?<![\w/*])[^\s/@'\"(),:]+:[^\s/@'\"(),]*@")

#: Names whose values are credentials wherever they appear: HTTP headers (SigV4's, basic and
#: bearer auth), presigned-URL query parameters, and the fields of NATS's CONNECT.
_SECRET_NAMES = (
    r"x-amz-security-token|x-amz-credential|x-amz-signature|authorization|proxy-authorization"
    r"|x-api-key|auth_token|pass|password|sig|jwt|token|secret_key|aws_secret_access_key"
    r"|aws_session_token"
)
# 'Name': b'value' / "name": "value" (a dict's repr, JSON): the quoted value
_QUOTED = re.compile(rf"""(?i)(['"](?:{_SECRET_NAMES})['"]\s*:\s*b?)(['"])(?:\\.|(?!\2).)*\2""")
# name=value in a query string or a header's parameters (Credential=..., Signature=...)
_PARAM = re.compile(rf"(?i)((?:[?&;]|\b)(?:{_SECRET_NAMES}|credential|signature)=)[^&\s'\",]+")
# "Name: value" and "name:value" lines (a header dump, SigV4's canonical request)
_LINE = re.compile(rf"(?im)^(\s*(?:{_SECRET_NAMES})\s*:)[^\r\n]*")
# an NKey seed (a .creds file's private half): 'S', its role, then 56 base32 characters
_NKEY_SEED = re.compile(r"\bS[ACNOPU][A-Z2-7]{56}\b")


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


def redact_headers(text: str) -> str:
    """``text`` with the value of every credential-carrying header, query parameter or field
    (``x-amz-security-token``, ``Authorization``, ``X-Amz-Signature``, a NATS ``auth_token``...)
    replaced by ``***``, whether written as a header line, ``name=value`` or a quoted pair; and
    every NKey seed."""
    text = _QUOTED.sub(r"\1\2***\2", text)
    text = _LINE.sub(r"\1***", text)
    text = _NKEY_SEED.sub("***", text)
    return _PARAM.sub(r"\1***", text)


class SecretFilter(logging.Filter):
    """Scrubs every record a handler emits, third-party ones included: URL userinfo, credential
    headers (:func:`redact_headers`) and each of ``secrets`` (configured values: keys, tokens,
    passwords) wherever they appear, in the message, its arguments and its traceback.

    Installed on a handler, it sees what every logger sends there, so a library's debug log
    that prints a request's headers (botocore does) shows none of ours.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # longest first, so a secret that contains another is replaced whole; too short a
        # value would blank ordinary words
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        text = redact_headers(redact_text(text))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself, as usual
            return True
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True
