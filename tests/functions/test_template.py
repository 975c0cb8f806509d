"""The OpenFaaS template's entry (template/fsd-python3-http/index.py: Flask on waitress), run as a
real process.

There is no Docker engine here, so the image is not built: index.py is started exactly as the
watchdog starts it (``python index.py``, with ``--handler``/``--port`` instead of the container's
environment) against a throwaway handler, and spoken to over HTTP on loopback. The Dockerfile,
template.yml and the ``function/`` skeleton are checked at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml  # type: ignore[import-untyped]
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from paths import ROOT

TEMPLATE = ROOT / "template" / "fsd-python3-http"
INDEX = TEMPLATE / "index.py"
LIMIT = 1024  # FSD_MAX_BODY_BYTES for the shared server
SECRET = "do-not-leak-this-secret"

HANDLER = f'''
from __future__ import annotations

import pathlib
import time

from .helper import GREETING  # relative imports work: the folder is loaded as a package


def handle(event, context):
    p = event.path
    if p.startswith("/echo"):
        return {{
            "statusCode": 200,
            "body": {{
                "method": event.method,
                "path": event.path,
                "query": event.query,
                "body": event.body.decode("utf-8"),
                "header": event.headers.get("x-fsd-echo"),
                "header_upper": event.headers.get("X-FSD-ECHO"),
                "header_names": sorted(event.headers),
                "hostname": context.hostname,
            }},
            "headers": {{"X-Handler": "echo"}},
        }}
    if p == "/text":
        return GREETING
    if p == "/bytes":
        return b"\\x00\\xffraw"
    if p == "/list":
        return {{"statusCode": 201, "body": [1, "two", None]}}
    if p == "/empty":
        return {{"statusCode": 204}}
    if p == "/typed":
        return {{"body": "<p>x</p>", "headers": {{"Content-Type": "text/html", "X-Num": 7}}}}
    if p == "/raise":
        raise ValueError("{SECRET}")
    if p == "/bad-status":
        return {{"statusCode": "200", "body": "x"}}
    if p == "/bool-status":
        return {{"statusCode": True, "body": "x"}}
    if p == "/bad-body":
        return {{"body": 3.5}}
    if p == "/none":
        return None
    if p == "/int":
        return 42
    if p == "/nan":
        return {{"body": {{"x": float("nan")}}}}
    if p == "/inject":
        return {{"body": "x", "headers": {{"X-Bad": "a\\r\\nSet-Cookie: y=1"}}}}
    if p == "/slow":
        pathlib.Path(event.query["marker"]).touch()
        time.sleep(float(event.query.get("seconds", "1")))
        return "done"
    return {{"statusCode": 404, "body": {{"error": "not found", "path": p}}}}
'''


def write_handler(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER)
    (folder / "helper.py").write_text('GREETING = "hello from fsd"\n')
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.lines)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def raw(self, data: bytes, timeout: float = 10.0, *, done: bool = True) -> bytes:
        """Send raw bytes (as many as the server takes), say we are done (unless ``done`` is
        false: a client waiting with the connection open), then read until the server closes
        the connection; a server that never does fails with a socket timeout."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
                if done:
                    sock.shutdown(socket.SHUT_WR)
            chunks = []
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        return b"".join(chunks)

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match or time.monotonic() > deadline:
                assert match, f"{pattern!r} not in the server log:\n{self.log()}"
                return match
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start_server(
    handler: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    port: int | None = None,
    pass_port: bool = True,
) -> Server:
    port = free_port() if port is None else port
    args = [sys.executable, str(INDEX)]
    if handler is not None:
        args += ["--handler", str(handler)]
    if pass_port:
        args += ["--port", str(port)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(proc, port)

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.lines.append(line)

    threading.Thread(target=read_log, daemon=True).start()
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            time.sleep(0.1)  # let the reader catch the last lines
            pytest.fail(f"index.py exited with {proc.returncode}:\n{server.log()}")
        try:
            if server.request("GET", "/_/health").status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            pytest.fail(f"index.py did not answer /_/health:\n{server.log()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handler = write_handler(tmp_path_factory.mktemp("fn") / "handler")
    srv = start_server(handler, env={"FSD_MAX_BODY_BYTES": str(LIMIT), "HOSTNAME": "fsd-test"})
    try:
        yield srv
    finally:
        srv.stop()


def status_of(raw: bytes) -> int:
    first = raw.split(b"\r\n", 1)[0].decode()
    match = re.match(r"HTTP/1\.[01] (\d{3}) ", first)  # 1.0 where the head was unreadable
    assert match, f"not an HTTP/1.x status line: {first!r}"
    return int(match.group(1))


def body_of(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# -- the python3-http contract ---------------------------------------------------------------------


def test_health(server: Server) -> None:
    reply = server.request("GET", "/_/health")
    assert reply.status == 200
    assert reply.body == b"OK"
    assert reply.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "GET"])
def test_echo_contract(server: Server, method: str) -> None:
    payload = "héllo wörld" if method != "GET" else ""
    reply = server.request(
        method,
        "/echo/a%20b?x=1&x=2&empty=&k=v",
        body=payload.encode() if payload else None,
        headers={"X-FSD-Echo": "Hi There", "Content-Type": "text/plain"},
    )
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["x-handler"] == "echo"
    got = reply.json()
    assert got["method"] == method
    assert got["path"] == "/echo/a b"  # percent-decoded, no query
    assert got["query"] == {"x": "2", "empty": "", "k": "v"}  # last value wins
    assert got["body"] == payload
    assert got["header"] == "Hi There"  # case-insensitive lookup ...
    assert got["header_upper"] == "Hi There"
    assert "X-Fsd-Echo" in got["header_names"]  # ... of the names WSGI passes on
    assert got["hostname"] == "fsd-test"


def test_plain_str_and_bytes(server: Server) -> None:
    text = server.request("GET", "/text")
    assert (text.status, text.body) == (200, b"hello from fsd")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    raw = server.request("GET", "/bytes")
    assert (raw.status, raw.body) == (200, b"\x00\xffraw")
    assert raw.headers["content-type"] == "application/octet-stream"


def test_json_list_body_and_status(server: Server) -> None:
    reply = server.request("POST", "/list", body=b"{}")
    assert reply.status == 201
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == [1, "two", None]
    assert reply.headers["content-length"] == str(len(reply.body))


def test_handler_headers_and_content_type_kept(server: Server) -> None:
    reply = server.request("GET", "/typed")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html"
    assert reply.headers["x-num"] == "7"
    assert reply.body == b"<p>x</p>"


def test_no_body_statuses_and_head(server: Server) -> None:
    empty = server.request("GET", "/empty")
    assert (empty.status, empty.body) == (204, b"")
    head = server.request("HEAD", "/text")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(b"hello from fsd"))


def test_keep_alive(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        bodies = []
        for _ in range(3):
            conn.request("POST", "/echo", body=b"again")
            resp = conn.getresponse()
            bodies.append(json.loads(resp.read())["body"])
            assert resp.getheader("Connection") is None
        assert bodies == ["again"] * 3
    finally:
        conn.close()


def test_unknown_path_goes_to_the_handler(server: Server) -> None:
    reply = server.request("GET", "/nowhere")
    assert reply.status == 404
    assert reply.json() == {"error": "not found", "path": "/nowhere"}


def test_metrics_exposition(server: Server) -> None:
    server.request("GET", "/text")
    reply = server.request("GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    text = reply.body.decode()
    assert "python_info" in text or "process_" in text
    assert re.search(r'fsd_http_server_requests_total\{method="GET",status="200"\} \d', text)


def test_access_log_one_line_per_request(server: Server) -> None:
    server.request("GET", "/text?secret=x")
    server.wait_log(r"INFO fsd\.http GET '/text' 200 \d+\.\d{6}s\n")
    assert "secret=x" not in server.log()  # the query string is not logged


def test_a_line_break_in_the_path_cannot_forge_a_log_line(server: Server) -> None:
    """The path is logged percent-decoded: quoted (repr), a %0a stays inside its own line."""
    forged = "1970-01-01 00:00:00,000 INFO fsd.http GET /admin 200"
    assert server.request("GET", "/forge%0a" + forged.replace(" ", "%20")).status == 404
    server.wait_log(r"GET '/forge\\n1970-01-01 00:00:00,000 INFO fsd\.http GET /admin 200' 404 ")
    assert not any(line.startswith(forged) for line in server.log().splitlines())


# -- errors ----------------------------------------------------------------------------------------


def test_handler_exception_is_500_without_traceback(server: Server) -> None:
    reply = server.request("POST", "/raise", body=b"x")
    assert reply.status == 500
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"error": "internal error", "detail": "ValueError"}
    assert b"Traceback" not in reply.body
    assert SECRET.encode() not in reply.body
    # ... the traceback is in the log instead
    server.wait_log(rf"Traceback \(most recent call last\):(.|\n)*ValueError: {SECRET}")
    server.wait_log(r"POST '/raise' 500 ")


@pytest.mark.parametrize(
    "path", ["/bad-status", "/bool-status", "/bad-body", "/none", "/int", "/nan", "/inject"]
)
def test_invalid_handler_result_is_500(server: Server, path: str) -> None:
    reply = server.request("GET", path)
    assert reply.status == 500
    got = reply.json()
    assert got["error"] == "internal error"
    assert got["detail"].startswith("invalid handler response")
    assert "set-cookie" not in reply.headers


def test_too_large_content_length_is_413_without_reading(server: Server) -> None:
    # a body is declared but never sent: a server that tried to read it would hang here
    raw = server.raw(
        b"POST /echo HTTP/1.1\r\nHost: fsd\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    assert status_of(raw) == 413
    assert b"Connection: close" in raw
    got = body_of(raw)
    assert got["error"] == "request too large"
    assert str(LIMIT) in got["detail"]
    server.wait_log(r"POST '/echo' 413 ")


def test_too_large_with_expect_100_is_refused_before_continue(server: Server) -> None:
    raw = server.raw(
        b"PUT /echo HTTP/1.1\r\nHost: fsd\r\nExpect: 100-continue\r\n"
        + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
    )
    assert status_of(raw) == 413  # no "100 Continue" first
    assert body_of(raw)["error"] == "request too large"


def test_body_at_the_limit_is_accepted(server: Server) -> None:
    reply = server.request("POST", "/echo", body=b"a" * LIMIT)
    assert reply.status == 200
    assert reply.json()["body"] == "a" * LIMIT


def test_chunked_body_is_read(server: Server) -> None:
    # what of-watchdog sends by default: it streams the body upstream with chunked encoding
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", "/echo", body=iter([b"ab", b"cd", b"e"]), encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["body"] == "abcde"
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: fsd\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = LIMIT // 2
    # the first chunk fits; the second passes the limit
    raw = server.raw(
        head
        + f"{first:x}\r\n".encode()
        + b"x" * first
        + b"\r\n"
        + f"{first + 1:x}\r\n".encode()
        + b"y" * (first + 1)
        + b"\r\n0\r\n\r\n"
    )
    assert status_of(raw) == 413
    assert body_of(raw)["error"] == "request too large"


CHUNKED_HEAD = b"POST /echo HTTP/1.1\r\nHost: fsd\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        # 2**64 - 1: waitress read its data until the client stopped, then closed in silence
        (b"FFFFFFFFFFFFFFFF\r\n" + b"x" * 100, 413),
        # the first chunk fits, the second's size passes the limit: refused before its data
        (f"{LIMIT // 2:x}\r\n".encode() + b"x" * (LIMIT // 2) + f"\r\n{LIMIT:x}\r\n".encode(), 413),
        (b"1" + b"0" * 16 + b"\r\n", 400),  # 2**64: no 64-bit size
    ],
    ids=["max-u64", "running-total", "overflow"],
)
def test_a_chunk_size_is_judged_at_its_size_line(
    server: Server, chunks: bytes, status: int
) -> None:
    """A client that announces a chunk and waits (connection open) gets its JSON refusal at
    once, as for a Content-Length over the limit, never a silent close."""
    raw = server.raw(CHUNKED_HEAD + chunks, done=False)
    assert status_of(raw) == status
    assert b"Connection: close" in raw
    error = json_error(raw)["error"]
    assert error == ("request too large" if status == 413 else "bad request")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: ten\r\n", 400),
        (b"Content-Length: -1\r\n", 400),
        (b"Transfer-Encoding: gzip\r\n", 501),
    ],
)
def test_bad_framing_is_refused(server: Server, headers: bytes, status: int) -> None:
    raw = server.raw(b"POST /echo HTTP/1.1\r\nHost: fsd\r\n" + headers + b"\r\n")
    assert status_of(raw) == status
    assert b"Connection: close" in raw
    assert body_of(raw)["error"]


# -- waitress' limits and refusals ----------------------------------------------------------------


def json_error(raw: bytes) -> dict[str, Any]:
    """The JSON error a raw reply carries (fails on HTML or text)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json" in head.lower(), head
    got = json.loads(body)
    assert isinstance(got, dict), got
    assert isinstance(got.get("error"), str), got
    return got


def test_every_error_status_is_json(server: Server) -> None:
    big_head = b"X-Big: " + b"a" * (80 * 1024) + b"\r\n"
    cases = [
        (b"TRACE /echo HTTP/1.1\r\nHost: fsd\r\n\r\n", 405),
        (b"BREW /echo HTTP/1.1\r\nHost: fsd\r\n\r\n", 405),
        (b"GET /echo HTTP/1.1\r\nHost: fsd\r\n" + big_head + b"\r\n", 431),
        (b"POST /echo HTTP/1.1\r\nHost: fsd\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nHost: fsd\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: fsd\r\nContent-Length: 99999\r\n\r\n", 413),
    ]
    for data, status in cases:
        raw = server.raw(data)
        assert status_of(raw) == status, raw[:200]
        got = json_error(raw)
        assert "<" not in got["error"] + got.get("detail", ""), got  # no HTML, no markup
    allow = server.raw(b"TRACE /echo HTTP/1.1\r\nHost: fsd\r\n\r\n")
    assert re.search(rb"\r\nAllow: [A-Z, ]*POST", allow)


def test_a_client_still_sending_a_too_large_body_reads_its_413(server: Server) -> None:
    # what most clients do (http.client, requests, curl without Expect): send the whole body,
    # then read; a server that closes with the body unread resets the connection instead
    body = b"z" * (4 * 1024 * 1024)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/echo", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        got = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413
    assert got["error"] == "request too large"
    assert str(LIMIT) in got["detail"]


def test_an_invalid_large_body_is_never_echoed(server: Server) -> None:
    # 9.8 MB that is not HTTP, after a request without framing (so it reads as the next one)
    marker = b"INVALID-BODY-"
    garbage = (marker * 70 + b"\n") * 10_000
    raw = server.raw(b"POST /echo HTTP/1.1\r\nHost: fsd\r\n\r\n" + garbage, timeout=30)
    assert status_of(raw) == 200  # the request itself, with its empty body
    assert marker not in raw
    assert len(raw) < 4096
    replies = raw.split(b"HTTP/1.")[2:]
    assert replies, "the garbage got no answer"
    for reply in replies:
        json_error(b"HTTP/1." + reply)


def threads_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)$", status, re.MULTILINE)
    assert match
    return int(match.group(1))


def test_stalled_clients_do_not_hold_the_server(tmp_path: Path) -> None:
    """200 clients that send half a request and stall: they hold no thread each, the server
    closes them (channel timeout), and a fresh request is answered although they outnumber the
    connection limit. A hang is a socket timeout, never a measured duration."""
    threads = 4
    env = {"FSD_THREADS": str(threads), "FSD_CONNECTION_LIMIT": "50", "FSD_CHANNEL_TIMEOUT": "2"}
    srv = start_server(write_handler(tmp_path / "h"), env=env)
    stalled: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: fsd\r\nContent-Le")
            stalled.append(sock)
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        try:
            conn.request("GET", "/text")
            fresh = conn.getresponse()
            assert (fresh.status, fresh.read()) == (200, b"hello from fsd")
        finally:
            conn.close()
        # each stalled client holds no thread: only the server's own few
        assert threads_of(srv.proc.pid) <= threads + 4
        for sock in stalled:  # ... and is let go: EOF (or a reset), not a socket timeout
            sock.settimeout(60)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
    finally:
        for sock in stalled:
            sock.close()
        assert srv.stop() == 0


class Tricklers:
    """``count`` clients sending a request head one byte every ``every`` seconds, each
    reconnecting as soon as the server closes it (as an attacker would), in one thread."""

    HEAD = b"GET /text HTTP/1.1\r\nHost: fsd\r\nX-Slow: " + b"a" * 4096

    def __init__(self, port: int, count: int, every: float) -> None:
        self.port, self.count, self.every = port, count, every
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.reconnects = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self) -> tuple[socket.socket, int]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(self.HEAD[:1])
        return sock, 1

    def run(self) -> None:
        socks = [self.connect() for _ in range(self.count)]
        self.started.set()
        while not self.stopped.wait(self.every):
            for i, (sock, sent) in enumerate(socks):
                try:
                    sock.sendall(self.HEAD[sent : sent + 1])
                    socks[i] = (sock, sent + 1)
                except OSError:  # closed by the server: come back at once
                    sock.close()
                    self.reconnects += 1
                    socks[i] = self.connect()
        for sock, _ in socks:
            sock.close()

    def __enter__(self) -> Tricklers:
        self.thread.start()
        assert self.started.wait(30), "the tricklers could not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def test_health_answers_while_tricklers_hold_every_connection(tmp_path: Path) -> None:
    """More clients than FSD_CONNECTION_LIMIT, each sending its head a byte a second (so never
    silent for FSD_CHANNEL_TIMEOUT, and well inside the read deadline), reconnecting when
    closed: a new client is still served, each time, because the server closes the connection
    that has waited longest on its client to admit it. waitress alone stops accepting at the
    limit and the new client waits in the backlog for as long as the tricklers go on."""
    env = {"FSD_CONNECTION_LIMIT": "50"}
    srv = start_server(write_handler(tmp_path / "h"), env=env)
    try:
        with Tricklers(srv.port, count=70, every=1.0):
            for _ in range(3):
                reply = srv.request("GET", "/_/health")  # a hang is the 10 s socket timeout
                assert (reply.status, reply.body) == (200, b"OK")
            srv.wait_log(r"connection limit \(50\) reached: closed \d+ connection")
            metrics = srv.request("GET", "/metrics").body.decode()
        evicted = re.search(
            r'fsd_http_server_evicted_connections_total\{state="receiving"\} (\d+)', metrics
        )
        assert evicted and float(evicted.group(1)) >= 1
    finally:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a 2 s read deadline and the default body limit (16 MiB)."""
    handler = write_handler(tmp_path_factory.mktemp("fn") / "handler")
    srv = start_server(handler, env={"FSD_REQUEST_READ_SECONDS": "2"})
    try:
        yield srv
    finally:
        srv.stop()


def test_a_request_not_received_in_time_gets_408(deadline_server: Server, tmp_path: Path) -> None:
    """Two clients trickle a byte every 0.3 s, one in its head, one in its body: each gets a
    JSON 408 once FSD_REQUEST_READ_SECONDS (2) has passed, and the connection is closed,
    although neither was ever silent for FSD_CHANNEL_TIMEOUT (30). Meanwhile a request served
    for longer than the deadline is not cut, and an idle keep-alive connection is not closed."""
    srv = deadline_server
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    idle.request("GET", "/text")
    assert idle.getresponse().read() == b"hello from fsd"
    served: list[Reply] = []
    slow = threading.Thread(
        target=lambda: served.append(
            srv.request("GET", f"/slow?seconds=3&marker={tmp_path / 'in'}")
        )
    )
    slow.start()
    heads = {
        "head": b"POST /echo HTTP/1.1\r\nHost: fsd\r\nX-Slow: " + b"a" * 4096,
        "body": b"POST /echo HTTP/1.1\r\nHost: fsd\r\nContent-Length: 4096\r\n\r\n" + b"b" * 4096,
    }
    socks = {name: socket.create_connection(("127.0.0.1", srv.port), timeout=10) for name in heads}
    sent = {name: 0 for name in heads}
    replies = {name: b"" for name in heads}
    open_ = set(heads)
    try:
        for name, sock in socks.items():
            if name == "body":  # the whole head at once: only the body trickles
                sent[name] = heads[name].index(b"\r\n\r\n") + 4
                sock.sendall(heads[name][: sent[name]])
            sock.setblocking(False)
        give_up = time.monotonic() + 20  # a hang fails here, not a timing
        while open_ and time.monotonic() < give_up:
            for name in list(open_):
                sock = socks[name]
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sock.send(heads[name][sent[name] : sent[name] + 1])
                    sent[name] += 1
                try:
                    while chunk := sock.recv(65536):
                        replies[name] += chunk
                    open_.discard(name)  # EOF: the server closed its side
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    open_.discard(name)
            time.sleep(0.3)  # the trickle itself
    finally:
        for sock in socks.values():
            sock.close()
    assert not open_, f"no answer, connection still open: {replies}"
    for name, raw in replies.items():
        assert status_of(raw) == 408, (name, raw[:200])
        assert b"Connection: close" in raw
        got = json_error(raw)
        assert got == {
            "error": "request timeout",
            "detail": "the request was not received in full within 2 s",
        }
    srv.wait_log(r"POST '/echo' 408 refused by the server")
    srv.wait_log(r"other '-' 408 refused by the server")  # the head never came whole
    slow.join(timeout=30)
    assert [(r.status, r.body) for r in served] == [(200, b"done")]
    idle.request("GET", "/text")  # idle far longer than the read deadline, and still open
    assert idle.getresponse().read() == b"hello from fsd"
    idle.close()


@pytest.mark.parametrize(
    "chunks",
    [
        b"1;" + b"e" * (8 * 1024),  # a size line with no end: waitress rebuilt it at every read
        b"0\r\nX-Trailer: " + b"t" * (80 * 1024),  # a trailer with no end, likewise
    ],
    ids=["size-line", "trailer"],
)
def test_an_endless_chunk_line_is_400(deadline_server: Server, chunks: bytes) -> None:
    """Under a body limit far above them (16 MiB), a chunk size line over 4 KiB and a trailer
    over 64 KiB are refused at once; waitress alone buffers them to the body limit, at a CPU
    cost that grows with the square of their length."""
    raw = deadline_server.raw(CHUNKED_HEAD + chunks, done=False)
    assert status_of(raw) == 400
    assert json_error(raw)["error"] == "bad request"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FSD_THREADS", "many"),
        ("FSD_THREADS", "0"),
        ("FSD_CONNECTION_LIMIT", "-1"),
        ("FSD_CHANNEL_TIMEOUT", "nan"),
        ("FSD_REQUEST_READ_SECONDS", "0"),
        ("FSD_MAX_BODY_BYTES", "1e9"),
        ("max_inflight", "many"),
        ("max_inflight", "2000"),
    ],
)
def test_malformed_limits_stop_the_start(tmp_path: Path, name: str, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(INDEX), "--handler", str(write_handler(tmp_path / "h"))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, name: value, "FSD_PORT": str(free_port())},
        check=False,
    )
    assert proc.returncode != 0
    assert name in proc.stderr
    assert "Traceback" not in proc.stderr


def test_threads_follow_the_watchdogs_max_inflight(tmp_path: Path) -> None:
    """Every request of-watchdog admits (``max_inflight``) gets a thread at once, with 2 to
    spare: the workers of one inference must all run together, a queued one stalls the rest."""
    srv = start_server(write_handler(tmp_path / "h"), env={"max_inflight": "13"})
    try:
        srv.wait_log(r"threads=15\n")
        assert threads_of(srv.proc.pid) >= 15  # waitress starts its threads up front
    finally:
        assert srv.stop() == 0
    srv = start_server(
        write_handler(tmp_path / "h"), env={"max_inflight": "13", "FSD_THREADS": "4"}
    )
    try:
        srv.wait_log(r"FSD_THREADS=4 is under the watchdog's max_inflight=13")
        srv.wait_log(r"threads=4\n")  # an explicit value wins, with the warning
    finally:
        assert srv.stop() == 0


def test_threads_default_without_max_inflight(tmp_path: Path) -> None:
    srv = start_server(write_handler(tmp_path / "h"), env={"max_inflight": "0"})
    try:
        srv.wait_log(r"threads=8\n")
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("bind", ["localhost", "fsd.invalid", "127.0.0.1:5000"])
def test_bind_must_be_a_literal_ip(tmp_path: Path, bind: str) -> None:
    """A host name may resolve to several addresses, which waitress serves on several servers
    that index.py's loop does not drive: refused at start-up, in one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, str(INDEX), "--handler", str(write_handler(tmp_path / "h"))],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FSD_BIND": bind, "FSD_PORT": str(free_port())},
        check=False,
    )
    assert proc.returncode == 2
    assert "FSD_BIND must be a literal IP address" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_no_http_server_of_its_own() -> None:
    """The template serves with Flask on waitress, as OpenFaaS's python3-http does: no
    http.server, no socketserver, no request or chunk parsing of its own."""
    source = INDEX.read_text()
    imported = set(re.findall(r"^(?:from|import) ([\w.]+)", source, re.MULTILINE))
    assert {"flask", "waitress.server"} <= imported
    assert not imported & {"http.server", "socketserver", "asyncio", "selectors"}
    for parser_code in ("readline(", "int(size", 'Transfer-Encoding")', "rfile", "wfile"):
        assert parser_code not in source, parser_code


# -- start-up and shutdown -------------------------------------------------------------------------


def test_default_handler_folder_and_port_from_env(tmp_path: Path) -> None:
    write_handler(tmp_path / "function")  # the build context's layout: ./function/handler.py
    port = free_port()
    srv = start_server(None, cwd=tmp_path, env={"FSD_PORT": str(port)}, port=port, pass_port=False)
    try:
        assert srv.request("GET", "/text").body == b"hello from fsd"
    finally:
        assert srv.stop() == 0


def test_handler_folder_from_env(tmp_path: Path) -> None:
    handler = write_handler(tmp_path / "elsewhere")
    srv = start_server(None, cwd=tmp_path, env={"FSD_HANDLER_DIR": str(handler)})
    try:
        assert srv.request("GET", "/text").status == 200
    finally:
        assert srv.stop() == 0


def test_missing_handler_exits_with_a_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(INDEX), "--handler", str(tmp_path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "no handler.py" in proc.stderr


def test_sigterm_when_idle_exits_quickly(tmp_path: Path) -> None:
    srv = start_server(write_handler(tmp_path / "h"))
    assert srv.stop(timeout=5) == 0
    srv.wait_log(r"SIGTERM")
    srv.wait_log(r"stopped")


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    srv = start_server(write_handler(tmp_path / "h"))
    marker = tmp_path / "entered"
    replies: list[Reply] = []
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            replies.append(srv.request("GET", f"/slow?seconds=3&marker={marker}"))
        except BaseException as exc:
            errors.append(exc)

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the slow request never reached the handler"
        time.sleep(0.01)
    sent = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    # new connections are refused while the request in flight is still running
    refused = False
    while time.monotonic() - sent < 2.5 and not refused:
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused = True
    assert refused, "the listening socket was still open during the drain"
    assert srv.proc.wait(timeout=10) == 0
    client.join(timeout=10)
    assert not errors, errors
    assert len(replies) == 1
    assert replies[0].status == 200
    assert replies[0].body == b"done"  # written in full, not cut by the shutdown
    srv.wait_log(r"draining 1 request")
    srv.wait_log(r"GET '/slow' 200 ")


def test_sigterm_lets_a_request_still_being_received_finish(tmp_path: Path) -> None:
    """A client whose body is still on its way when the drain starts gets its answer: the
    drain closes only idle connections. ``Expect: 100-continue`` tells the test when the server
    holds the request's head; the body follows once the listener is closed."""
    srv = start_server(write_handler(tmp_path / "h"))
    body = b'{"half": "way"}'
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: fsd\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        srv.proc.send_signal(signal.SIGTERM)
        refused = False
        while not refused:  # bounded by the server's exit: then connect is refused too
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                refused = True
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    raw = b"".join(chunks)
    assert raw, "the connection was closed with the request half received"
    assert status_of(raw) == 200
    assert body_of(raw)["body"] == body.decode()
    assert srv.proc.wait(timeout=10) == 0
    srv.wait_log(r"draining 1 request")


# -- the image recipe (static: no Docker engine here) ----------------------------------------------


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (TEMPLATE / "Dockerfile").read_text().splitlines():
        match = re.match(r'^ENV (\w+)=("([^"]*)"|\S+)\s*$', line)
        if match:
            env[match.group(1)] = match.group(3) if match.group(3) is not None else match.group(2)
    return env


def dockerfile_instructions() -> list[tuple[str, list[str]]]:
    """(instruction, arguments) of each Dockerfile instruction, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for line in (TEMPLATE / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending
    return [(words[0].upper(), words[1:]) for words in (line.split() for line in lines)]


def build_context(root: Path, handler: Path, copy: list[str]) -> Path:
    """A build context as ``faas-cli build`` lays it out (build/<fn>/): the template folder,
    the handler folder as ./function, and stack.yml's ``configuration.copy`` INSIDE ./function."""
    shutil.copytree(TEMPLATE, root, ignore=shutil.ignore_patterns("function"))
    shutil.copytree(handler, root / "function")
    for item in copy:
        source = ROOT / item
        target = root / "function" / Path(item).name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return root


def test_every_copy_source_is_in_both_build_contexts(tmp_path: Path) -> None:
    """A ``faas-cli new`` function (only the function/ skeleton) and fsd's functions (stack.yml,
    which copies src, pyproject.toml and README.md into function/) both build: no COPY names
    a file only one of them has, and the handler folder's project is installed only if any."""
    stack = yaml.safe_load((ROOT / "stack.yml").read_text())
    contexts = {
        "skeleton": build_context(tmp_path / "skeleton", TEMPLATE / "function", []),
        **{
            name: build_context(
                tmp_path / name, ROOT / spec["handler"], stack["configuration"]["copy"]
            )
            for name, spec in stack["functions"].items()
        },
    }
    copies = [args for op, args in dockerfile_instructions() if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        assert not args[0].startswith("["), "JSON-form COPY: parse it here first"
        if any(a.startswith("--from=") for a in args):
            continue  # from another stage, not the context
        sources = [a for a in args[:-1] if not a.startswith("--")]
        assert sources, args
        for context_name, context in contexts.items():
            for source in sources:
                assert list(context.glob(source.rstrip("/"))), (
                    f"{source} not in the {context_name} context"
                )
    runs = [" ".join(args) for op, args in dockerfile_instructions() if op == "RUN"]
    project = [run for run in runs if "pyproject.toml" in run or "function/src" in run]
    assert project and all("if [ -f function/pyproject.toml ]; then" in run for run in project)
    assert (contexts["coordinator"] / "function" / "pyproject.toml").is_file()
    assert not (contexts["skeleton"] / "function" / "pyproject.toml").exists()


def test_shutdown_delay_outlasts_the_watchdogs_healthcheck_interval() -> None:
    """of-watchdog keeps accepting for ``healthcheck_interval`` after SIGTERM (pkg/watchdog.go
    listenUntilShutdown): index.py listens 2 s longer, so the last request admitted finds it."""
    env = dockerfile_env()
    interval = re.fullmatch(r"(\d+)s", env["healthcheck_interval"])
    assert interval
    assert int(env["FSD_SHUTDOWN_DELAY_SECONDS"]) == int(interval.group(1)) + 2


def test_template_yml() -> None:
    spec = yaml.safe_load((TEMPLATE / "template.yml").read_text())
    assert spec["language"] == TEMPLATE.name == "fsd-python3-http"
    assert spec["fprocess"] == "python index.py"
    assert dockerfile_env()["fprocess"] == spec["fprocess"]


def test_dockerfile_follows_the_python3_http_layout() -> None:
    text = (TEMPLATE / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (?:--platform=\S+ )?(\S+)(?: AS (\w+))?$", text, re.MULTILINE)
    watchdog = [image for image, alias in froms if alias == "watchdog"]
    assert len(watchdog) == 1
    # pinned, at the 0.11 line OpenFaaS's own python3-http template uses
    assert re.fullmatch(r"ghcr\.io/openfaas/of-watchdog:0\.11\.\d+", watchdog[0])
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[1-9]$", text, re.MULTILINE)
    assert froms[-1][0] == "python:${PYTHON_VERSION}-slim"
    assert "COPY --from=watchdog /fwatchdog /usr/bin/fwatchdog" in text
    assert re.search(r"^USER app$", text, re.MULTILINE)
    assert text.rstrip().endswith('CMD ["fwatchdog"]')
    assert "HEALTHCHECK" in text
    env = dockerfile_env()
    assert env["mode"] == "http"
    assert env["FSD_BIND"] == "127.0.0.1"
    # the watchdog forwards to exactly where index.py listens
    assert env["upstream_url"] == f"http://{env['FSD_BIND']}:{env['FSD_PORT']}"
    assert env["FSD_HANDLER_DIR"] == "/home/app/function"


def test_template_requirements_are_the_python3_http_stack() -> None:
    lines = (TEMPLATE / "requirements.txt").read_text().splitlines()
    reqs = {re.split(r"[<>=!~ ]", line, maxsplit=1)[0].lower(): line for line in lines}
    reqs.pop("", None)
    reqs = {k: v for k, v in reqs.items() if not k.startswith("#")}
    for name in ("flask", "prometheus-client"):
        assert re.search(r">=[\d.]+,<\d+$", reqs[name]), reqs.get(name)  # a range, bounded
    # index.py reaches into waitress' internals (channel, task, server map): patch releases only,
    # and the one tested here is within them
    assert reqs["waitress"] == "waitress~=3.0.2"
    assert Version(importlib.metadata.version("waitress")) in SpecifierSet("~=3.0.2")
    text = (TEMPLATE / "Dockerfile").read_text()
    assert re.search(r"^COPY requirements\.txt (\S+)\nRUN pip install .*-r \1$", text, re.M)


def test_function_skeleton_serves_under_the_entry(tmp_path: Path) -> None:
    """``faas-cli new --lang fsd-python3-http`` copies template/<lang>/function into the new
    handler folder (as openfaas/python-flask-template's python3-http/function): it must exist
    and answer under index.py."""
    skeleton = TEMPLATE / "function"
    assert (skeleton / "handler.py").is_file()
    assert (skeleton / "requirements.txt").is_file()
    srv = start_server(skeleton)
    try:
        reply = srv.request("GET", "/")
        assert reply.status == 200
        assert reply.json() == {"message": "Hello from fsd-python3-http"}
    finally:
        assert srv.stop() == 0
