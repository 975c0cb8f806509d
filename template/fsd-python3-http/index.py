#!/usr/bin/env python
"""fsd's OpenFaaS python3-http entry: a Flask app served by waitress, upstream of of-watchdog.

The stack of OpenFaaS's own python3-http template (openfaas/python-flask-template,
``template/python3-http/index.py``: Flask + waitress behind of-watchdog in ``mode=http``), with
waitress' limits set, a JSON body on every error, ``/metrics``, and a graceful stop. The watchdog
owns port 8080, its own ``/_/health`` and ``/_/ready``, and forwards every other request to
``upstream_url`` (``http://127.0.0.1:5000``), where this listens.

Contract with the handler (the python3-http one)::

    def handle(event, context) -> dict | str | bytes: ...

``event`` has ``body`` (bytes), ``headers`` (a case-insensitive read-only mapping; WSGI does not
keep the case a name was sent in, so names read ``X-Fsd-Echo``; a header sent several times is
joined with ", "), ``method``, ``query`` (a dict of str -> str, the last value wins) and ``path``
(percent-decoded, without the query). ``context`` has ``hostname``. The handler returns
``{"statusCode": int, "body": str | bytes | dict | list, "headers": {...}}`` (each key optional:
200, empty, none; a dict or list body is sent as JSON) or a plain ``str`` (200, text/plain) or
``bytes`` (200, application/octet-stream). Anything else, a statusCode that is not an int in
200..599, and any exception answer 500 ``{"error": "internal error", "detail": ...}``; the
traceback goes to the log, never to the client.

Served here, not by the handler: ``GET /_/health`` (200 "OK") and ``GET /metrics``
(prometheus_client's default registry, where fsd's own metrics live).

Every error status is JSON ``{"error", "detail"}``: Flask's (405 for a method not served, ...)
through its error handler, waitress' own (400 malformed request, 408 request not received in
time, 413 body over the limit, 431 head too large, 501 transfer coding) through
:class:`JsonErrorTask`; none quotes the request. A client still sending a refused body gets to
read its 413: :class:`LingeringChannel` half-closes and discards what follows (bounded) instead
of closing with unread data, which makes the kernel reset the connection before the client
reads the answer.

Slow clients: waitress gives a request a thread only once it has all of it, so a slow or
stalled client holds a connection, never a thread; but it counts only silence
(``FSD_CHANNEL_TIMEOUT``), which a client sending a byte now and then never meets, and at
``FSD_CONNECTION_LIMIT`` it stops accepting, leaving new connections in the backlog for as long
as the open ones last. So here a request must arrive whole within ``FSD_REQUEST_READ_SECONDS``
of its first byte (the clock waits while the server itself is busy on the connection), else a
408 and the connection is closed (:meth:`LingeringChannel.enforce_read_deadline`); a chunked
body is judged at each chunk's size line, 413 as for a Content-Length (400 for a size line over
4 KiB or a size over 64 bits, or a trailer over 64 KiB: :class:`BoundedChunkedReceiver`); and at
the limit :class:`FsdServer` admits a new connection by closing the one that has waited longest
on its client (lingering after an error answer first, then receiving a request, then idle),
never one whose request is being served or whose answer is being written: only when every
connection is, do new ones wait in the backlog.

Configuration (environment; integers, refused at start-up when malformed): ``--handler DIR`` /
``FSD_HANDLER_DIR`` / ``./function``, ``--port`` / ``FSD_PORT`` / ``PORT`` (5000; ``PORT`` is what
Knative Serving sets in a container it runs: the image sets ``FSD_PORT`` for the watchdog in front,
which listens on Knative's 8080), ``--bind`` / ``FSD_BIND``
(127.0.0.1: only the watchdog in the same container should reach it; a literal IPv4 or IPv6
address, as a host name may resolve to several and waitress would then serve each on a server
of its own, which :func:`serve` does not drive), ``FSD_MAX_BODY_BYTES`` (16 MiB),
``FSD_THREADS`` (requests served at once: of-watchdog's ``max_inflight`` + 2 when the watchdog
has one, so every request it admits runs at once, which the workers of one inference need, else
8), ``FSD_CONNECTION_LIMIT`` (1000: open connections, each costs a socket; at the limit one
waiting on its client is closed for a new one), ``FSD_CHANNEL_TIMEOUT`` (30: seconds of silence
before a connection, idle or mid-request, is closed; a request being served is never cut),
``FSD_REQUEST_READ_SECONDS`` (60: seconds to receive one request, head and body, from its first
byte; 16 MiB in 60 s is 2.2 Mbit/s, and the watchdog forwards at its client's pace, so raise it
for slow uploaders), ``FSD_LOG_LEVEL`` (INFO),
``FSD_SHUTDOWN_DELAY_SECONDS`` (0) and ``FSD_DRAIN_SECONDS`` (30).

Shutdown: on SIGTERM or SIGINT this keeps serving for ``FSD_SHUTDOWN_DELAY_SECONDS`` (the watchdog
forwards SIGTERM at once but keeps accepting requests for its ``healthcheck_interval``), then
closes its listening socket, closes each connection once idle, lets the requests in flight,
and those still being received, finish and their answers be written (up to
``FSD_DRAIN_SECONDS``; a slow one still meets ``FSD_REQUEST_READ_SECONDS`` and
``FSD_CHANNEL_TIMEOUT``), and exits 0.
waitress has no drain of its own, so this runs waitress' loop itself (:func:`serve`).
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from waitress import wasyncore  # type: ignore[import-untyped]
from waitress.adjustments import Adjustments  # type: ignore[import-untyped]
from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.parser import HTTPRequestParser  # type: ignore[import-untyped]
from waitress.receiver import ChunkedReceiver  # type: ignore[import-untyped]
from waitress.server import TcpWSGIServer  # type: ignore[import-untyped]
from waitress.task import ErrorTask  # type: ignore[import-untyped]
from waitress.utilities import BadRequest, RequestEntityTooLarge  # type: ignore[import-untyped]
from werkzeug.exceptions import HTTPException

log = logging.getLogger("fsd.http")

HEALTH_PATH: Final = "/_/health"
METRICS_PATH: Final = "/metrics"
METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_HEADER_BYTES: Final = 64 * 1024
# a chunk's size line, extensions included, and its size: Go's net/http (of-watchdog's) refuses
# a longer line and a size of more than 16 hex digits; waitress bounds neither
MAX_CHUNK_LINE: Final = 4096
MAX_CHUNK_SIZE: Final = 2**64 - 1
FULL_RETRY_SECONDS: Final = 0.5  # all connections busy: look again for one to close after this
LOG_EVERY_SECONDS: Final = 10.0  # at most one warning this often about the connection limit
# headers the server computes itself (or WSGI forbids): a handler's values for them are dropped
HOP_HEADERS: Final = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)
TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP field name (RFC 9110)
ERRORS: Final = {  # waitress' own refusals, answered without quoting the request
    400: ("bad request", "malformed HTTP request"),
    408: ("request timeout", "the request was not received in full within {read} s"),
    413: ("request too large", "the body exceeds {body} bytes (FSD_MAX_BODY_BYTES)"),
    431: ("request header fields too large", "the request head exceeds {head} bytes"),
    501: ("not implemented", "only Transfer-Encoding: chunked is supported"),
}

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
HTTP_EVICTED: Final = Counter(
    "fsd_http_server_evicted_connections",
    "Connections closed to admit a new one at FSD_CONNECTION_LIMIT, by what they were doing.",
    ["state"],
)
EVICTION_STATES: Final = ("lingering", "receiving", "idle")  # in the order they are closed


class Headers(Mapping[str, str]):
    """Request headers, read-only, looked up whatever the case."""

    def __init__(self, pairs: Iterator[tuple[str, str]]) -> None:
        self._items = {name.lower(): (name, value) for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)


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
    """The handler returned something that cannot be sent."""


class Reply(Response):
    default_mimetype = None  # no Content-Type unless there is a body to type


def json_reply(status: int, value: object, headers: list[tuple[str, str]] | None = None) -> Reply:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Reply(body, status, headers, content_type="application/json")


def error_reply(status: int, error: str, detail: str) -> Reply:
    return json_reply(status, {"error": error, "detail": detail})


def build_reply(result: object) -> Reply:
    """The response for what the handler returned (raises InvalidResponse)."""
    if isinstance(result, str):
        return Reply(result, 200, content_type="text/plain; charset=utf-8")
    if isinstance(result, bytes | bytearray | memoryview):
        return Reply(bytes(result), 200, content_type="application/octet-stream")
    if not isinstance(result, Mapping):
        raise InvalidResponse(f"handler returned {type(result).__name__}")
    status = result.get("statusCode", 200)
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise InvalidResponse(f"statusCode must be an int in 200..599, got {type(status).__name__}")
    headers = _response_headers(result.get("headers"))
    body = result.get("body")
    if body is None:
        reply = Reply(b"", status)
    elif isinstance(body, str):
        reply = Reply(body, status, content_type="text/plain; charset=utf-8")
    elif isinstance(body, bytes | bytearray | memoryview):
        reply = Reply(bytes(body), status, content_type="application/octet-stream")
    elif isinstance(body, dict | list):
        try:
            reply = json_reply(status, body)
        except (TypeError, ValueError) as exc:
            raise InvalidResponse(f"body is not JSON-serialisable: {type(exc).__name__}") from exc
    else:
        raise InvalidResponse(f"body must be str, bytes, dict or list, got {type(body).__name__}")
    for name, value in headers:
        reply.headers[name] = value  # the handler's Content-Type wins over the default
    return reply


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
        if name.lower() not in HOP_HEADERS:
            headers.append((name, text))
    return headers


def method_label(method: str | None) -> str:
    """A bounded metric label: the methods served, else ``other``."""
    return method if method in METHODS else "other"


def create_app(handle: Handle, context: Context) -> Flask:
    """The Flask app: every path and method of :data:`METHODS` goes to ``handle``."""
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # the handler sees the path as sent, never a redirect
    app.url_map.strict_slashes = False
    app.response_class = Reply

    @app.before_request
    def started() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        seconds = time.perf_counter() - g.get("started", time.perf_counter())
        method = method_label(request.method)
        HTTP_REQUESTS.labels(method, str(response.status_code)).inc()
        HTTP_SECONDS.labels(method).observe(seconds)
        # %r: the path is percent-decoded, and a %0a in it must not start a forged log line
        log.info("%s %r %d %.6fs", method, request.path, response.status_code, seconds)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Reply:
        status = exc.code or 500
        name = (exc.name or "error").lower()
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return json_reply(status, {"error": name, "detail": exc.description or name}, headers)

    @app.errorhandler(Exception)
    def crash(exc: Exception) -> Reply:  # only a bug here: the handler's own are caught below
        log.exception("unexpected %s on %s %r", type(exc).__name__, request.method, request.path)
        return error_reply(500, "internal error", type(exc).__name__)

    def call(path: str) -> Reply:
        if request.method in ("GET", "HEAD"):
            if request.path == HEALTH_PATH:
                return Reply("OK", 200, content_type="text/plain; charset=utf-8")
            if request.path == METRICS_PATH:
                return Reply(generate_latest(), 200, content_type=CONTENT_TYPE_LATEST)
        event = Event(
            body=request.get_data(cache=False),
            headers=Headers(iter(request.headers.items())),
            method=request.method,
            query={key: values[-1] for key, values in request.args.lists()},
            path=request.path,
        )
        try:
            result = handle(event, context)
        except Exception as exc:
            log.exception("handler raised %s on %s %r", type(exc).__name__, event.method, path)
            return error_reply(500, "internal error", type(exc).__name__)
        try:
            return build_reply(result)
        except InvalidResponse as exc:
            log.error("invalid handler response on %s %r: %s", event.method, event.path, exc)
            return error_reply(500, "internal error", f"invalid handler response: {exc}")

    for rule, defaults in (("/", {"path": ""}), ("/<path:path>", None)):
        app.add_url_rule(
            rule, "call", call, defaults=defaults, methods=METHODS, provide_automatic_options=False
        )
    return app


# -- waitress: JSON for its own refusals, a client that is refused gets to read why, a request
# -- gets a total read deadline, and a full server makes room for a new connection ---------------


class RequestTimeout(BadRequest):  # type: ignore[misc]
    code = 408
    reason = "Request Timeout"


class JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress' answer to a request it refuses before the app (400, 408, 413, 431, 501), as
    JSON."""

    def execute(self) -> None:
        exc = self.request.error
        server = self.channel.server
        adj = server.adj
        error, detail = ERRORS.get(exc.code, ("error", "request refused"))
        detail = detail.format(
            body=adj.max_request_body_size - 1,
            head=adj.max_request_header_size,
            read=server.read_seconds,
        )
        body = json.dumps({"error": error, "detail": detail}).encode()
        self.status = f"{exc.code} {exc.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self.channel.linger = True
        # a request timed out before its head was whole has neither method nor path
        method = method_label(getattr(self.request, "command", None))
        path = getattr(self.request, "path", None) or "-"
        HTTP_REQUESTS.labels(method, str(exc.code)).inc()
        log.info("%s %r %d refused by the server", method, path, exc.code)


class BoundedChunkedReceiver(ChunkedReceiver):  # type: ignore[misc]
    """waitress' chunked body reader, which judges each chunk at its size line: a size that
    takes the body over the limit is refused (413) before any of its data is read, as a
    Content-Length is; a size line over :data:`MAX_CHUNK_LINE` or a size over
    :data:`MAX_CHUNK_SIZE` (400), and a trailer over :data:`MAX_HEADER_BYTES` (400).

    waitress alone reads a huge chunk's data until the client stops, then closes in silence
    after ``channel_timeout``; and it rebuilds a size line or trailer with no end at every
    read, which for 16 MiB costs it ~20 s of CPU. The data is fed to waitress' own parser
    piece by piece so that a piece ends where a size line does and its size can be read."""

    def __init__(self, buf: Any, limit: int) -> None:
        super().__init__(buf)
        self.limit = limit

    def refuse(self, error: Any) -> None:
        self.error = error
        self.all_chunks_received = True

    def received(self, s: bytes) -> int:
        start = 0
        while start < len(s) and not (self.error or self.completed):
            at_size_line = not (
                self.chunk_remainder or self.validate_chunk_end or self.all_chunks_received
            )
            if at_size_line:
                if self.control_line.endswith(b"\r") and s[start : start + 1] == b"\n":
                    end = start + 1
                else:
                    found = s.find(b"\r\n", start)
                    end = len(s) if found < 0 else found + 2
                if len(self.control_line) + end - start > MAX_CHUNK_LINE + 2:
                    self.refuse(BadRequest("chunk size line too long"))
                    break
            elif self.chunk_remainder:
                end = min(len(s), start + self.chunk_remainder)
            elif self.validate_chunk_end:
                end = min(len(s), start + 2 - len(self.chunk_end))
            else:  # the trailer: waitress gives back what follows it
                end = len(s)
            taken = super().received(s[start:end])
            if taken <= 0:
                break
            start += taken
            if self.error:
                break
            if at_size_line and self.chunk_remainder:  # a chunk begins: its size is whole
                if self.chunk_remainder > MAX_CHUNK_SIZE:
                    self.refuse(BadRequest("chunk size out of range"))
                elif len(self.buf) + self.chunk_remainder > self.limit:
                    self.refuse(RequestEntityTooLarge(f"exceeds max_body of {self.limit}"))
            elif self.all_chunks_received and len(self.trailer) > MAX_HEADER_BYTES:
                self.refuse(BadRequest("trailer too large"))
        # once refused, the rest is this request's too: never read as a request of its own
        return len(s) if self.error else start


class BoundedRequestParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress' request parser, with :class:`BoundedChunkedReceiver` for a chunked body."""

    body_rcv: Any = None  # waitress' own default

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if self.chunked:
            limit = self.adj.max_request_body_size - 1
            self.body_rcv = BoundedChunkedReceiver(self.body_rcv.getbuf(), limit)


class LingeringChannel(HTTPChannel):  # type: ignore[misc]
    """waitress' connection, which after an error answer half-closes and reads on (nginx's
    ``lingering_close``) instead of closing with the refused body unread, which would reset the
    connection and lose the answer; it discards at most ``linger_bytes``, and waitress closes
    it after ``channel_timeout`` counted from the answer, as reading on does not count.

    It also keeps ``reading_since``: when the server began waiting for the rest of the request
    being received (its first byte, or the end of the server's own work on the connection),
    for the read deadline (:meth:`enforce_read_deadline`) and for eviction (:meth:`evict`)."""

    error_task_class = JsonErrorTask
    parser_class = BoundedRequestParser
    linger_bytes = 64 * 1024 * 1024
    linger = False  # set by JsonErrorTask
    lingering = False
    discarded = 0
    reading_since = 0.0  # time.monotonic()
    request: Any = None  # waitress' own default: the request being received

    def received(self, data: bytes) -> bool:
        current = self.request
        result = bool(super().received(data))
        if self.request is not None and self.request is not current:  # a new request began
            self.reading_since = time.monotonic()
        return result

    def handle_close(self) -> None:
        if self.lingering or not self.linger or not self.connected or self.total_outbufs_len:
            super().handle_close()
            return
        self.lingering = True
        self.reading_since = time.monotonic()
        self.will_close = self.close_when_flushed = False
        try:
            self.socket.shutdown(socket.SHUT_WR)  # the answer is out: the client reads it now
        except OSError:
            super().handle_close()

    def send_continue(self) -> None:
        # waitress would send 100 Continue to a request it already refused (a body over the
        # limit announced with Expect: 100-continue), then never answer it: refuse it instead
        if self.request.error is None:
            super().send_continue()

    def readable(self) -> bool:
        return True if self.lingering else bool(super().readable())

    def handle_read(self) -> None:
        if not self.lingering:
            super().handle_read()
            return
        try:
            data = self.recv(self.adj.recv_bytes)  # b"" (and closed) at the client's end
        except OSError:
            data = b""
        self.discarded += len(data)
        if data and self.discarded > self.linger_bytes:
            super().handle_close()

    def waiting_on_client(self) -> bool:
        """Nothing to serve or write here: only the client can move this connection on."""
        return not (
            self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed
        )

    def enforce_read_deadline(self, now: float, seconds: float) -> None:
        """Answer 408 to a request not received in full ``seconds`` after the server began
        waiting for it. waitress counts only silence (``channel_timeout``), which a client
        sending a byte now and then never meets. Runs on the main loop, as waitress' reads."""
        if not self.waiting_on_client():
            self.reading_since = now  # the server is busy here: the client is not late
            return
        if self.request is None or self.lingering or now - self.reading_since < seconds:
            return
        with self.requests_lock:  # as waitress' received() hands a request over
            request = self.request
            if not request.headers_finished:  # no usable head: answered in HTTP/1.0, as 431
                request.close()
                request = self.parser_class(self.adj)
            request.error = RequestTimeout(f"not received within {seconds:g} s")
            request.completed = True
            self.request = None
            self.sent_continue = False
            self.requests.append(request)
            self.server.add_task(self)

    def eviction_rank(self) -> tuple[int, float] | None:
        """Which to close first for a new connection (lowest): lingering after an error answer,
        then the one receiving a request for longest, then the one idle for longest; ``None``
        for a connection whose request is being served or whose answer is being written."""
        if not self.waiting_on_client():
            return None
        if self.lingering:
            return (0, self.reading_since)
        if self.request is not None:
            return (1, self.reading_since)
        return (2, self.last_activity)

    def evict(self) -> None:
        if self.request is not None:
            self.request.close()  # a body spooled to a temporary file
        super().handle_close()  # at once, no lingering: the slot is wanted now


class FsdServer(TcpWSGIServer):  # type: ignore[misc]
    """waitress' TCP server that at ``connection_limit`` closes a connection waiting on its
    client (:meth:`LingeringChannel.eviction_rank`) to accept a new one, instead of leaving
    every new connection in the backlog for as long as the slow ones take, and that enforces
    the read deadline in its periodic maintenance."""

    channel_class = LingeringChannel
    full_until = 0.0  # time.monotonic(): every connection busy, new ones wait until then
    next_channel_cleanup: float = 0  # waitress' own default
    evicted = 0  # closed since the last warning
    warned_at = -LOG_EVERY_SECONDS

    def __init__(self, application: Any, adj: Any, read_seconds: int) -> None:
        self.read_seconds = read_seconds
        super().__init__(application, adj=adj)

    def readable(self) -> bool:
        # waitress' readable(), without its refusal at the limit: handle_accept judges it
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        if not self.accepting:
            return False
        return not self.full() or time.monotonic() >= self.full_until

    def full(self) -> bool:
        # open connections (waitress counts its listener and trigger too, so that a limit of
        # 1 or 2 never accepts)
        return bool(len(self.active_channels) >= self.adj.connection_limit)

    def handle_accept(self) -> None:
        if self.full() and not self.evict_one():
            self.full_until = time.monotonic() + FULL_RETRY_SECONDS
            self.warn(
                "connection limit (%d) reached with every connection busy: new ones wait",
                self.adj.connection_limit,
            )
            return
        super().handle_accept()

    def evict_one(self) -> bool:
        ranked = [
            (rank, channel)
            for channel in self.active_channels.values()
            if (rank := channel.eviction_rank()) is not None
        ]
        if not ranked:
            return False
        rank, victim = min(ranked, key=lambda item: item[0])
        victim.evict()
        HTTP_EVICTED.labels(EVICTION_STATES[rank[0]]).inc()
        self.evicted += 1
        if self.warn(
            "connection limit (%d) reached: closed %d connection(s) waiting on their client "
            "(since the last such warning) to admit new ones",
            self.adj.connection_limit,
            self.evicted,
        ):
            self.evicted = 0
        return True

    def warn(self, message: str, *args: object) -> bool:
        now = time.monotonic()
        if now - self.warned_at < LOG_EVERY_SECONDS:
            return False
        self.warned_at = now
        log.warning(message, *args)
        return True

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # channel_timeout: connections silent for that long
        clock = time.monotonic()
        for channel in list(self.active_channels.values()):
            channel.enforce_read_deadline(clock, self.read_seconds)


# -- start-up and shutdown -----------------------------------------------------------------------


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


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not low <= int(raw) <= high:
        raise SystemExit(f"fsd-python3-http: {name} must be an integer in {low}..{high}")
    return int(raw)


MAX_INFLIGHT: Final = 1024  # the operator's bound on max_inflight (fsd.k8s.config)
SPARE_THREADS: Final = 2  # beyond max_inflight: /metrics and /_/health never wait behind them


@dataclass(frozen=True)
class Settings:
    max_body: int
    threads: int
    connection_limit: int
    channel_timeout: int
    read_seconds: int
    shutdown_delay: int
    drain: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        # of-watchdog admits max_inflight requests at once (config/config.go getInt, 0: no
        # limit; pkg/watchdog.go wraps the handler in a concurrency limiter when > 0): serve
        # them all at once, or the ones queued here wait for a thread while the workers of
        # the same inference wait for them
        inflight = env_int(env, "max_inflight", 0, 0, MAX_INFLIGHT)
        default_threads = inflight + SPARE_THREADS if inflight else 8
        threads = env_int(env, "FSD_THREADS", default_threads, 1, MAX_INFLIGHT + SPARE_THREADS)
        if threads < inflight:
            log.warning(
                "FSD_THREADS=%d is under the watchdog's max_inflight=%d: admitted requests "
                "will queue for a thread",
                threads,
                inflight,
            )
        return cls(
            max_body=env_int(env, "FSD_MAX_BODY_BYTES", 16 * 1024 * 1024, 1, 2**31),
            threads=threads,
            connection_limit=env_int(env, "FSD_CONNECTION_LIMIT", 1000, 1, 100_000),
            channel_timeout=env_int(env, "FSD_CHANNEL_TIMEOUT", 30, 1, 3600),
            read_seconds=env_int(env, "FSD_REQUEST_READ_SECONDS", 60, 1, 3600),
            shutdown_delay=env_int(env, "FSD_SHUTDOWN_DELAY_SECONDS", 0, 0, 3600),
            drain=env_int(env, "FSD_DRAIN_SECONDS", 30, 0, 3600),
        )


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--handler",
        default=env.get("FSD_HANDLER_DIR") or "function",
        help="folder holding handler.py (env FSD_HANDLER_DIR; default ./function)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=env.get("FSD_PORT") or env.get("PORT") or "5000",
        help="TCP port (env FSD_PORT, else PORT as Knative sets it; default 5000)",
    )
    parser.add_argument(
        "--bind",
        default=env.get("FSD_BIND") or "127.0.0.1",
        help="address to listen on (env FSD_BIND; default 127.0.0.1)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    try:
        ipaddress.ip_address(args.bind)
    except ValueError:
        parser.error(
            f"--bind / FSD_BIND must be a literal IP address (127.0.0.1, ::1), got "
            f"{args.bind[:64]!r}: a host name may resolve to several addresses"
        )
    return args


def serve(server: Any, settings: Settings) -> None:
    """waitress' loop (its ``run``), run here so SIGTERM can stop it gracefully."""
    stop_at: list[float] = []

    def stop(signum: int, _frame: types.FrameType | None) -> None:
        if not stop_at:
            stop_at.append(time.monotonic() + settings.shutdown_delay)
            log.info("%s: stopping in %ds", signal.Signals(signum).name, settings.shutdown_delay)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = 0.0
    while True:
        wasyncore.loop(timeout=0.2, map=server._map, use_poll=True, count=1)
        if not stop_at or time.monotonic() < stop_at[0]:
            continue
        channels = list(server.active_channels.values())
        if server.accepting:  # stop accepting: new connections are refused from now on
            wasyncore.dispatcher.close(server)
            deadline = time.monotonic() + settings.drain
            busy = sum(1 for c in channels if c.requests or c.request is not None)
            if busy:
                log.info("draining %d request(s), up to %ds", busy, settings.drain)
        # the closed listener no longer runs waitress' idle sweep: a stalled client still
        # meets channel_timeout
        server.maintenance(time.time())
        for channel in channels:  # close each connection once idle and its answer is out
            # (channel.request: one still being received, headers or body, is let finish)
            if not channel.requests and channel.request is None and not channel.total_outbufs_len:
                channel.will_close = True
        if not channels:
            break
        if time.monotonic() >= deadline:
            log.warning("exiting with %d connection(s) still busy", len(channels))
            break
    wasyncore.close_all(server._map)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    logging.basicConfig(
        level=env.get("FSD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    args = parse_args(argv, env)
    settings = Settings.from_env(env)
    folder = Path(args.handler).resolve()
    context = Context(hostname=env.get("HOSTNAME") or socket.gethostname())
    app = create_app(load_handler(folder), context)
    adj = Adjustments(
        host=args.bind,
        port=args.port,
        ident="fsd-python3-http",
        threads=settings.threads,
        connection_limit=settings.connection_limit,
        channel_timeout=settings.channel_timeout,
        cleanup_interval=1,  # the channel timeout and the read deadline, to the second
        max_request_body_size=settings.max_body + 1,  # waitress refuses a body of this size
        max_request_header_size=MAX_HEADER_BYTES,
        expose_tracebacks=False,
        asyncore_use_poll=True,
    )
    server = FsdServer(app, adj, settings.read_seconds)
    log.info(
        "listening on http://%s:%s handler=%s max_body=%d read_seconds=%d threads=%d",
        args.bind,
        server.effective_port,
        folder / "handler.py",
        settings.max_body,
        settings.read_seconds,
        settings.threads,
    )
    serve(server, settings)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
