"""moto's server, locked: every request must be signed (AWS Signature V4) with this start's keys,
and moto's control routes answer nobody. Run by :class:`fsd.embedded.aws.MotoServer` as
``python -m fsd.embedded.moto_locked PORT`` with the keys in its environment (never on a
command line).

Why a gate in front of moto rather than moto's own checks: moto checks no signatures unless
``INITIAL_NO_AUTH_ACTION_COUNT`` is set, and even then only where each service's code asks (S3
per route, the others in ``call_action``), only for keys its IAM backend made, and never on
``/moto-api`` (``data.json`` dumps every queue, message and object; ``reset`` wipes them). One
WSGI middleware before moto's dispatcher refuses anything not signed with our key pair, for
every service and route alike; botocore's own signer recomputes the signature.

What passes: ``Authorization: AWS4-HMAC-SHA256`` with our access key, a signature over the
method, path, query, the signed headers (``host`` and ``x-amz-date`` among them) and the body's
SHA-256 (S3's ``x-amz-content-sha256`` must match the body, or say the body is unsigned, as AWS
allows), dated within 15 minutes. Not accepted: presigned URLs, SigV2, anything unsigned.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import http
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from xml.sax.saxutils import escape

log = logging.getLogger("fsd.embedded.moto_locked")  # __name__ is __main__ when run

HOST = "127.0.0.1"  # loopback only, whatever the caller says
ACCESS_KEY_VAR = "FSD_MOTO_ACCESS_KEY"
SECRET_KEY_VAR = "FSD_MOTO_SECRET_KEY"
MAX_SKEW_SECONDS = 15 * 60  # AWS's own bound on a request's X-Amz-Date
MAX_BODY = 5 * 1024**3  # S3's largest single PUT; only read once the key id matched
_READ_STEP = 1 << 20

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]{1,256}),\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9;_.-]{1,2048}),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_SCOPE_PART = re.compile(r"[a-z0-9-]{1,64}")
_DATE = re.compile(r"\d{8}T\d{6}Z")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# bodies the signature does not cover, as AWS allows for S3 (the headers are still signed)
_UNSIGNED_BODIES = frozenset(
    {
        "UNSIGNED-PAYLOAD",
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    }
)
_CONTROL = re.compile(r"/+moto-api", re.IGNORECASE)  # moto routes every path starting so

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Refused(Exception):
    """A request the gate does not pass on: an HTTP status and an AWS error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


@functools.cache
def _verifier_class(s3: bool) -> type[Any]:
    """botocore's SigV4 signer (S3's variant keeps paths as sent), told to sign exactly the
    headers the client named (botocore's own list skips a few, e.g. user-agent)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth  # noqa: PLC0415 (child process only)
    from botocore.awsrequest import HTTPHeaders  # noqa: PLC0415

    class Verifier(S3SigV4Auth if s3 else SigV4Auth):  # type: ignore[misc]
        def headers_to_sign(self, request: Any) -> Any:
            headers = HTTPHeaders()
            for name, value in request.headers.items():
                headers[name.lower()] = value
            return headers

    return Verifier


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 beyond)."""
    chunked = bool(environ.get("wsgi.input_terminated"))
    if chunked:
        want = limit + 1
    else:
        text = str(environ.get("CONTENT_LENGTH") or "0")
        if not text.isdigit() or len(text) > 15:
            raise Refused(400, "InvalidRequest", "bad Content-Length")
        want = int(text)
        if want > limit:
            raise Refused(413, "EntityTooLarge", f"request bodies stop at {limit} bytes")
    stream, parts, got = environ["wsgi.input"], [], 0
    while got < want:
        chunk = stream.read(min(want - got, _READ_STEP))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got > limit:
        raise Refused(413, "EntityTooLarge", f"request bodies stop at {limit} bytes")
    if not chunked and got != want:
        raise Refused(400, "IncompleteBody", "the body ended before its Content-Length")
    return b"".join(parts)


class SigV4Gate:
    """WSGI middleware: passes to ``app`` only requests signed with ``access_key`` and
    ``secret_key``; ``/moto-api`` (moto's dump, reset, config) is refused even to them."""

    def __init__(
        self,
        app: WsgiApp,
        access_key: str,
        secret_key: str,
        *,
        max_body: int = MAX_BODY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_key or not secret_key:
            raise ValueError("the gate needs a key pair")
        self.app = app
        self._access_key, self._secret_key = access_key, secret_key
        self._max_body = max_body
        self._clock = clock

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            if _CONTROL.match(str(environ.get("PATH_INFO", ""))):
                raise Refused(403, "AccessDenied", "moto's control routes are off on this server")
            body = self._check(environ)
        except Refused as refused:
            log.warning(
                "refused %s %r: %s",
                environ.get("REQUEST_METHOD", "?"),
                str(environ.get("PATH_INFO", ""))[:200],
                refused.code,
            )
            return _error(environ, start_response, refused)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("wsgi.input_terminated", None)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _check(self, environ: dict[str, Any]) -> bytes:
        """The body of a request signed with our keys; Refused otherwise."""
        raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
        path, _, query = raw.partition("?")
        if "X-Amz-Signature=" in query or "X-Amz-Credential=" in query:
            raise Refused(403, "AccessDenied", "presigned URLs are not accepted here")
        match = _AUTH.fullmatch(str(environ.get("HTTP_AUTHORIZATION", "")).strip())
        if match is None:
            raise Refused(403, "AccessDenied", "requests must be signed (AWS Signature V4)")
        key_id, day, region, service, terminator = (match["credential"].split("/") + [""] * 5)[:5]
        if not hmac.compare_digest(key_id.encode(), self._access_key.encode()):
            code = "InvalidAccessKeyId" if service == "s3" else "InvalidClientTokenId"
            raise Refused(403, code, "the access key is not this server's")
        scope_ok = terminator == "aws4_request" and match["credential"].count("/") == 4
        if not (scope_ok and _SCOPE_PART.fullmatch(region) and _SCOPE_PART.fullmatch(service)):
            raise Refused(403, "AccessDenied", "bad credential scope")
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed or len(signed) > 64:
            raise Refused(403, "AccessDenied", "host and x-amz-date must be signed")
        values = {name: _header(environ, name) for name in signed}
        headers = {name: value for name, value in values.items() if value is not None}
        if len(headers) != len(values):
            raise Refused(403, "SignatureDoesNotMatch", "a signed header is missing")
        stamp = headers["x-amz-date"]
        if not _DATE.fullmatch(stamp) or stamp[:8] != day:
            raise Refused(403, "AccessDenied", "bad X-Amz-Date")
        try:
            when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            raise Refused(403, "AccessDenied", "bad X-Amz-Date") from None
        if abs(self._clock() - when.timestamp()) > MAX_SKEW_SECONDS:
            raise Refused(403, "RequestTimeTooSkewed", "X-Amz-Date is over 15 minutes off")
        if not path.startswith("/"):  # absolute-form request target
            from urllib.parse import urlsplit  # noqa: PLC0415

            path = urlsplit(raw).path or "/"
        body = _read_body(environ, self._max_body)
        self._check_signature(environ, service, region, path, query, headers, body, match)
        return body

    def _check_signature(
        self,
        environ: dict[str, Any],
        service: str,
        region: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        match: re.Match[str],
    ) -> None:
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415 (child process only)
        from botocore.credentials import Credentials  # noqa: PLC0415

        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared not in _UNSIGNED_BODIES:
            actual = hashlib.sha256(body).hexdigest()
            if not _SHA256_HEX.fullmatch(declared) or not hmac.compare_digest(declared, actual):
                raise Refused(400, "XAmzContentSHA256Mismatch", "the body is not the signed one")
        url = f"http://{headers['host']}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"), url=url, data=body)
        for name, value in headers.items():
            request.headers[name] = value
        request.context["timestamp"] = headers["x-amz-date"]
        credentials = Credentials(self._access_key, self._secret_key)
        verifier = _verifier_class(service == "s3")(credentials, service, region)
        string_to_sign = verifier.string_to_sign(request, verifier.canonical_request(request))
        expected = verifier.signature(string_to_sign, request)
        if not hmac.compare_digest(expected.encode(), match["signature"].encode()):
            raise Refused(403, "SignatureDoesNotMatch", "the signature does not match")


def _header(environ: dict[str, Any], name: str) -> str | None:
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        value = environ.get(key)
    else:
        value = environ.get(f"HTTP_{key}")
    return None if value is None else str(value)


def _error(environ: dict[str, Any], start_response: StartResponse, refused: Refused) -> list[bytes]:
    """The refusal in the form the caller's SDK parses: JSON for JSON protocols (SQS today),
    the query protocol's ``<ErrorResponse>`` for forms (SNS, IAM, STS...), else S3's
    ``<Error>`` (which botocore's REST parsers read too)."""
    status = f"{refused.status} {http.HTTPStatus(refused.status).phrase}"
    code, message = escape(refused.code), escape(refused.message)
    content_type = str(environ.get("CONTENT_TYPE", ""))
    headers = [("x-amzn-query-error", f"{refused.code};Sender")]
    if "json" in content_type or _CONTROL.match(str(environ.get("PATH_INFO", ""))):
        body = json.dumps({"__type": refused.code, "message": refused.message}).encode()
        headers.append(("Content-Type", "application/x-amz-json-1.0"))
    elif "form-urlencoded" in content_type or "Action=" in str(environ.get("QUERY_STRING", "")):
        body = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
            f"<Message>{message}</Message></Error><RequestId>0</RequestId></ErrorResponse>"
        ).encode()
        headers.append(("Content-Type", "text/xml"))
    else:
        body = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
        headers.append(("Content-Type", "application/xml"))
    headers.append(("Content-Length", str(len(body))))
    start_response(status, headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def main(argv: list[str] | None = None) -> int:
    """Serve moto behind the gate on 127.0.0.1:PORT until terminated."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit() or not 0 < int(args[0]) < 65536:
        log.error("usage: python -m fsd.embedded.moto_locked PORT (keys in the environment)")
        return 2
    access_key = os.environ.pop(ACCESS_KEY_VAR, "")
    secret_key = os.environ.pop(SECRET_KEY_VAR, "")
    if not access_key or not secret_key:
        log.error("%s and %s must be set", ACCESS_KEY_VAR, SECRET_KEY_VAR)
        return 2
    port = int(args[0])
    os.environ["MOTO_PORT"] = str(port)  # what moto_server sets: moto builds some URLs from it
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 (the embedded extra)
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server  # noqa: PLC0415

    moto = DomainDispatcherApplication(create_backend_app)
    gate = SigV4Gate(moto, access_key, secret_key)
    server = make_server(HOST, port, gate, threaded=True, request_handler=MotoRequestHandler)
    log.info("moto behind a SigV4 gate on http://%s:%d", HOST, port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
