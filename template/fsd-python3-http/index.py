#!/usr/bin/env python
"""fsd's OpenFaaS python3-http server: the upstream process of of-watchdog in ``mode=http``.

Standard library only (``http.server``) plus ``prometheus_client``, which fsd already depends on.
The watchdog owns port 8080, its own ``/_/health`` and ``/_/ready``, and forwards every other
request to ``upstream_url`` (``http://127.0.0.1:5000``), where this server listens.

Contract with the handler (the python3-http one)::

    def handle(event, context) -> dict | str | bytes: ...

``event`` has ``body`` (bytes), ``headers`` (a case-insensitive read-only mapping that keeps the
names as sent; a header sent several times is joined with ", "), ``method``, ``query`` (a dict of
str -> str, the last value wins) and ``path`` (percent-decoded, without the query). ``context`` has
``hostname``. The handler returns ``{"statusCode": int, "body": str | bytes | dict | list,
"headers": {...}}`` (each key optional: 200, empty, none; a dict or list body is sent as JSON with
``Content-Type: application/json``) or a plain ``str`` (200, text/plain) or ``bytes`` (200,
application/octet-stream). Anything else, a statusCode that is not an int in 200..599, and any
exception answer 500 with JSON ``{"error": "internal error", "detail": ...}``; the traceback goes to
the log, never to the client.

Served here, not by the handler: ``GET /_/health`` (200 "OK", as the watchdog answers it) and
``GET /metrics`` (prometheus_client's default registry, where fsd's own metrics live).

Request bodies: at most ``FSD_MAX_BODY_BYTES`` (default 16 MiB). A larger Content-Length is
refused with 413 before any of the body is read (and the connection closed). A chunked body
(what of-watchdog sends unless ``http_buffer_req_body=true``) is read chunk by chunk and refused
with 413 as soon as it would pass the limit. A request with neither Content-Length nor
Transfer-Encoding has an empty body (RFC 9112), so 411 is never needed.

Configuration: ``--handler DIR`` / ``FSD_HANDLER_DIR`` / ``./function`` (the folder holding
``handler.py``), ``--port`` / ``FSD_PORT`` (5000), ``--bind`` / ``FSD_BIND`` (127.0.0.1: only the
watchdog in the same container should reach it), ``FSD_MAX_BODY_BYTES``, ``FSD_LOG_LEVEL`` (INFO),
``FSD_SHUTDOWN_DELAY_SECONDS`` (0) and ``FSD_DRAIN_SECONDS`` (30).

Shutdown: on SIGTERM or SIGINT the server keeps serving for ``FSD_SHUTDOWN_DELAY_SECONDS`` (the
watchdog forwards SIGTERM at once but keeps accepting requests for its ``healthcheck_interval``),
then stops accepting connections, lets the requests in flight finish (up to
``FSD_DRAIN_SECONDS``) so no response is cut half-written, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

log = logging.getLogger("fsd.http")

DEFAULT_PORT: Final = 5000
DEFAULT_BIND: Final = "127.0.0.1"
DEFAULT_HANDLER_DIR: Final = "function"
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_DRAIN_SECONDS: Final = 30.0
HEALTH_PATH: Final = "/_/health"
METRICS_PATH: Final = "/metrics"
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# headers this server computes itself; a handler's values for them are dropped
HOP_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP field name (RFC 9110)
MAX_CHUNK_LINE: Final = 4096

HTTP_REQUESTS: Final = Counter(
    "fsd_http_server_requests",
    "Requests answered by the function's HTTP server, by method and status code.",
    ["method", "status"],
)
HTTP_SECONDS: Final = Histogram(
    "fsd_http_server_request_seconds",
    "Seconds the function's HTTP server took per request, reading to last byte written.",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)


class Headers(Mapping[str, str]):
    """Request headers: case-insensitive lookup, the names kept as the client sent them."""

    __slots__ = ("_items",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        items: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            key = name.lower()
            if key in items:
                first, seen = items[key]
                items[key] = (first, f"{seen}, {value}")
            else:
                items[key] = (name, value)
        self._items = items

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class Event:
    body: bytes
    headers: Headers
    method: str
    query: dict[str, str]
    path: str


@dataclass(frozen=True, slots=True)
class Context:
    hostname: str


Handle = Callable[[Event, Context], object]


class InvalidResponse(Exception):
    """The handler returned something this server cannot send."""


class RequestRejected(Exception):
    """The request cannot be served as framed: answer ``status`` and close the connection."""

    def __init__(self, status: HTTPStatus, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def error_response(status: int, error: str, detail: str) -> Response:
    body = json_bytes({"error": error, "detail": detail})
    return Response(status, [("Content-Type", "application/json")], body)


def build_response(result: object) -> Response:
    """The HTTP response for what the handler returned (raises InvalidResponse)."""
    if isinstance(result, str):
        return Response(200, [("Content-Type", "text/plain; charset=utf-8")], result.encode())
    if isinstance(result, bytes | bytearray | memoryview):
        return Response(200, [("Content-Type", "application/octet-stream")], bytes(result))
    if not isinstance(result, Mapping):
        raise InvalidResponse(f"handler returned {type(result).__name__}")
    status = result.get("statusCode", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise InvalidResponse(f"statusCode must be an int in 200..599, got {type(status).__name__}")
    headers = _response_headers(result.get("headers"))
    body = result.get("body")
    default_type: str | None
    if body is None:
        payload, default_type = b"", None
    elif isinstance(body, str):
        payload, default_type = body.encode(), "text/plain; charset=utf-8"
    elif isinstance(body, bytes | bytearray | memoryview):
        payload, default_type = bytes(body), "application/octet-stream"
    elif isinstance(body, dict | list):
        try:
            payload = json_bytes(body)
        except (TypeError, ValueError) as exc:
            raise InvalidResponse(f"body is not JSON-serialisable: {type(exc).__name__}") from exc
        default_type = "application/json"
    else:
        raise InvalidResponse(f"body must be str, bytes, dict or list, got {type(body).__name__}")
    if default_type is not None and not any(n.lower() == "content-type" for n, _ in headers):
        headers.append(("Content-Type", default_type))
    return Response(status, headers, payload)


def _response_headers(raw: object) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise InvalidResponse(f"headers must be a dict, got {type(raw).__name__}")
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not TOKEN.match(name):
            raise InvalidResponse("a header name is not a valid HTTP field name")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidResponse(f"header {name} must be a str or a number")
        text = str(value)
        if any(c in text for c in "\r\n\0"):
            raise InvalidResponse(f"header {name} contains a line break")
        if name.lower() in HOP_HEADERS:
            log.debug("dropping handler header %s: the server sets it", name)
            continue
        headers.append((name, text))
    return headers


class InFlight:
    """Counts requests being served, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()

    @property
    def count(self) -> int:
        with self._cond:
            return self._count

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout=timeout)


class FunctionServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not keep the process alive
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handle: Handle, context: Context, max_body: int
    ) -> None:
        self.handle_fn = handle
        self.context = context
        self.max_body = max_body
        self.inflight = InFlight()
        self.stopping = threading.Event()
        super().__init__(address, RequestHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        log.exception("unexpected error serving %s", client_address)


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the watchdog reuses its connections
    server_version = "fsd-python3-http"

    def version_string(self) -> str:
        return self.server_version

    @property
    def fserver(self) -> FunctionServer:
        return cast(FunctionServer, self.server)

    # -- logging: one INFO line per request is written by _dispatch ------------------------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:
        log.warning("%s: " + format, self.address_string(), *args)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: " + format, self.address_string(), *args)

    # -- request entry points ---------------------------------------------------------------------

    def handle_expect_100(self) -> bool:
        """Refuse a too-large body before the client sends it (no ``100 Continue``)."""
        try:
            self._check_length()
        except RequestRejected as exc:
            self._send_rejection(exc)
            HTTP_REQUESTS.labels(self.command, str(int(exc.status))).inc()
            log.info("%s %s %d %.6fs", self.command, self._log_path(), exc.status, 0.0)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        start = time.perf_counter()
        status = 500
        with self.fserver.inflight:
            try:
                response = self._serve()
                status = response.status
                self._write(response)
            except RequestRejected as exc:
                status = exc.status
                self._send_rejection(exc)
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close_connection = True
                log.warning("client went away: %s", type(exc).__name__)
            finally:
                seconds = time.perf_counter() - start
                HTTP_REQUESTS.labels(self.command, str(int(status))).inc()
                HTTP_SECONDS.labels(self.command).observe(seconds)
                log.info("%s %s %d %.6fs", self.command, self._log_path(), status, seconds)

    def _serve(self) -> Response:
        url = urlsplit(self.path)
        path = unquote(url.path) or "/"
        if self.command in ("GET", "HEAD"):
            if path == HEALTH_PATH:
                return Response(200, [("Content-Type", "text/plain; charset=utf-8")], b"OK")
            if path == METRICS_PATH:
                return Response(200, [("Content-Type", CONTENT_TYPE_LATEST)], generate_latest())
        body = self._read_body()
        event = Event(
            body=body,
            headers=Headers(list(self.headers.items())),
            method=self.command,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            path=path,
        )
        try:
            result = self.fserver.handle_fn(event, self.fserver.context)
        except Exception as exc:
            log.exception("handler raised %s on %s %s", type(exc).__name__, self.command, path)
            return error_response(500, "internal error", type(exc).__name__)
        try:
            return build_response(result)
        except InvalidResponse as exc:
            log.error("invalid handler response on %s %s: %s", self.command, path, exc)
            return error_response(500, "internal error", f"invalid handler response: {exc}")

    # -- request body -----------------------------------------------------------------------------

    def _check_length(self) -> int | None:
        """The declared Content-Length (None if absent); RequestRejected if invalid or too big."""
        raw = self.headers.get("Content-Length")
        if raw is None or "Transfer-Encoding" in self.headers:
            return None
        text = raw.strip()
        if not text.isdigit():
            raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "invalid Content-Length")
        length = int(text)
        if length > self.fserver.max_body:
            raise RequestRejected(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                "request too large",
                f"Content-Length {length} exceeds the limit of {self.fserver.max_body} bytes",
            )
        return length

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
            if codings != ["chunked"]:
                raise RequestRejected(
                    HTTPStatus.NOT_IMPLEMENTED,
                    "unsupported transfer encoding",
                    "only Transfer-Encoding: chunked is supported",
                )
            if "Content-Length" in self.headers:
                self.close_connection = True  # ambiguous framing (RFC 9112 6.3): do not reuse
            return self._read_chunked()
        length = self._check_length()
        if not length:
            return b""
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "body shorter than sent")
        return body

    def _read_chunked(self) -> bytes:
        limit = self.fserver.max_body
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
                raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "bad chunk size line")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise RequestRejected(
                    HTTPStatus.BAD_REQUEST, "bad request", "bad chunk size"
                ) from None
            if size < 0:
                raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "bad chunk size")
            if size == 0:
                break
            if total + size > limit:
                raise RequestRejected(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "request too large",
                    f"chunked body exceeds the limit of {limit} bytes",
                )
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.read(2) != b"\r\n":
                raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "truncated chunk")
            parts.append(chunk)
            total += size
        while True:  # trailer fields, up to the empty line
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
                raise RequestRejected(HTTPStatus.BAD_REQUEST, "bad request", "bad chunk trailer")
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)

    # -- response ---------------------------------------------------------------------------------

    def _send_rejection(self, exc: RequestRejected) -> None:
        self.close_connection = True  # the unread body must not be parsed as the next request
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._write(error_response(exc.status, exc.error, exc.detail))

    def _write(self, response: Response) -> None:
        if self.fserver.stopping.is_set():
            self.close_connection = True
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and response.status not in (204, 304):
            self.wfile.write(response.body)
        self.wfile.flush()

    def _log_path(self) -> str:
        return urlsplit(self.path).path if isinstance(self.path, str) else "-"


# -- start-up --------------------------------------------------------------------------------------


def load_handler(folder: Path) -> Handle:
    """Import ``folder/handler.py`` as ``function.handler`` (relative imports work) and return
    its ``handle``."""
    source = folder / "handler.py"
    if not source.is_file():
        raise SystemExit(f"fsd-python3-http: no handler.py in {folder}")
    package = types.ModuleType("function")
    package.__path__ = [str(folder)]
    sys.modules["function"] = package
    if str(folder) not in sys.path:
        sys.path.append(str(folder))  # sibling modules import by name; never shadows a package
    spec = importlib.util.spec_from_file_location("function.handler", source)
    if spec is None or spec.loader is None:
        raise SystemExit(f"fsd-python3-http: cannot import {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function.handler"] = module
    spec.loader.exec_module(module)
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise SystemExit(f"fsd-python3-http: {source} defines no handle(event, context)")
    return cast(Handle, handle)


def _env_number(name: str, default: float, env: Mapping[str, str]) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"fsd-python3-http: {name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"fsd-python3-http: {name} must not be negative")
    return value


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--handler",
        default=env.get("FSD_HANDLER_DIR") or DEFAULT_HANDLER_DIR,
        help="folder holding handler.py (env FSD_HANDLER_DIR; default ./function)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=env.get("FSD_PORT") or str(DEFAULT_PORT),
        help="TCP port (env FSD_PORT; default 5000)",
    )
    parser.add_argument(
        "--bind",
        default=env.get("FSD_BIND") or DEFAULT_BIND,
        help="address to listen on (env FSD_BIND; default 127.0.0.1)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    logging.basicConfig(
        level=env.get("FSD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    args = parse_args(argv, env)
    max_body = int(_env_number("FSD_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, env))
    delay = _env_number("FSD_SHUTDOWN_DELAY_SECONDS", 0.0, env)
    drain = _env_number("FSD_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS, env)

    folder = Path(args.handler).resolve()
    handle = load_handler(folder)
    context = Context(hostname=env.get("HOSTNAME") or socket.gethostname())
    server = FunctionServer((args.bind, args.port), handle, context, max_body)

    def stop(signum: int, _frame: types.FrameType | None) -> None:
        if server.stopping.is_set():
            return
        server.stopping.set()
        log.info("%s: stopping in %.1fs", signal.Signals(signum).name, delay)

        def shutdown() -> None:
            time.sleep(delay)
            server.shutdown()  # from another thread: serve_forever runs in the main one

        threading.Thread(target=shutdown, name="fsd-shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "listening on http://%s:%d handler=%s max_body=%d",
        args.bind,
        server.server_port,
        folder / "handler.py",
        max_body,
    )
    try:
        server.serve_forever()
    finally:
        # close the listening socket first (new connections are refused rather than left in the
        # backlog), then let the requests in flight finish: daemon threads, so nothing joins here
        server.server_close()
        pending = server.inflight.count
        if pending:
            log.info("draining %d request(s), up to %.0fs", pending, drain)
        if not server.inflight.wait_idle(drain):
            log.warning("exiting with %d request(s) still running", server.inflight.count)
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
