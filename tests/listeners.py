"""A plain TCP listener that records who connected to it: proof that a function did not.

Point a function's NATS URL, S3 endpoint or worker URL at a :class:`Recorder` and every
connection it makes is counted, with the first bytes it sent (give a NATS ``INFO`` greeting and
a NATS client answers with its ``CONNECT``, credentials included). :meth:`Recorder.count` is
exact without waiting on a clock: it connects a sentinel of its own and returns once the
sentinel was accepted, so every connection queued before it has been counted.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
NATS_INFO = b'INFO {"server_id":"recorder","version":"2.10.0","max_payload":1048576}\r\n'


def _whole_http_request(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip() or 0)
    return True


class Recorder:
    def __init__(self, greeting: bytes = b"") -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._greeting = greeting
        self._lock = threading.Condition()
        self._peers: list[int] = []  # peer ports, in accept order
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True, name="recorder").start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._peers.append(peer[1])
                self._lock.notify_all()
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        """Greet, then keep what the peer sends: a whole HTTP request, or else all it sends
        until it pauses for two seconds (at most 64 KB)."""
        data = b""
        with conn:
            try:
                if self._greeting:
                    conn.sendall(self._greeting)
                conn.settimeout(2.0)
                while len(data) < 65536 and not _whole_http_request(data):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
        if data:  # the sentinel of count() sends nothing
            with self._lock:
                self.received.append(data)
                self._lock.notify_all()

    def count(self) -> int:
        """Connections accepted so far, not counting the sentinel used to flush the queue."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sentinel:
            mine = sentinel.getsockname()[1]
            with self._lock:
                assert self._lock.wait_for(lambda: mine in self._peers, timeout=30)
                self._peers.remove(mine)
                return len(self._peers)

    def wait_received(self, n: int, timeout: float = 60.0) -> list[bytes]:
        """What the first ``n`` connections sent, once they are over."""
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.received) >= n, timeout=timeout)
            return list(self.received)

    def reset(self) -> None:
        with self._lock:
            self._peers.clear()
            self.received.clear()

    def close(self) -> None:
        self._sock.close()


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to a function; its status and JSON reply."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
