"""Health of the function template under a slowloris: N clients trickling one header byte every
P seconds against index.py (each reconnecting whenever the server closes it), while a prober
asks ``GET /_/health`` every 2 s with a 10 s timeout. Loopback only, bounded in time.

    .venv/bin/python benchmarks/slowloris.py --clients 1100 --period 10 --seconds 70

prints one line: health answered / failed, its median and worst latency, and what the tricklers
saw (reconnects, 408s). ``--limit`` sets ``FSD_CONNECTION_LIMIT`` (default: the template's 1000);
``--index`` attacks another version's server, the baseline (``git show REV:template/...``).
docs/benchmarks.md has the results.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "template" / "fsd-python3-http"
REQUEST = b"GET /trickle HTTP/1.1\r\nHost: fsd\r\nX-Pad: " + b"a" * 100_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int) -> socket.socket:
    s = socket.socket()
    s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        s.connect(("127.0.0.1", port))
    return s


@dataclass
class _Client:
    sock: socket.socket
    sent: int  # bytes of REQUEST sent
    due: float  # when the next byte goes (time.monotonic())


def _trickle(port: int, clients: int, period: float, stop: float, seen: dict[str, int]) -> None:
    """Every client sends the next byte of REQUEST each ``period`` seconds (staggered)."""
    start = time.monotonic()
    socks = [_Client(_connect(port), 0, start + (i % 100) * period / 100) for i in range(clients)]
    while time.monotonic() < stop:
        now = time.monotonic()
        for i, c in enumerate(socks):
            if now < c.due:
                continue
            try:
                try:
                    data = c.sock.recv(4096)
                    seen["408"] += data.startswith((b"HTTP/1.0 408", b"HTTP/1.1 408"))
                    raise ConnectionResetError  # an answer, or the end: the server let go
                except BlockingIOError:
                    pass
                c.sock.send(REQUEST[c.sent : c.sent + 1])
                c.sent, c.due = c.sent + 1, now + period
            except OSError:
                c.sock.close()
                seen["reconnects"] += 1
                socks[i] = _Client(_connect(port), 0, now + period)
        time.sleep(0.05)
    for c in socks:
        c.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1100)
    parser.add_argument("--period", type=float, default=10.0, help="seconds between bytes")
    parser.add_argument("--seconds", type=float, default=70.0, help="length of the attack")
    parser.add_argument("--limit", type=int, default=0, help="FSD_CONNECTION_LIMIT (0: default)")
    parser.add_argument(
        "--index",
        type=Path,
        default=TEMPLATE / "index.py",
        help="the server to attack (another version's index.py, for a baseline)",
    )
    args = parser.parse_args(argv)
    port = _free_port()
    env = {**os.environ, "FSD_LOG_LEVEL": "WARNING"}
    if args.limit:
        env["FSD_CONNECTION_LIMIT"] = str(args.limit)
    command = [sys.executable, str(args.index), "--handler", str(TEMPLATE / "function")]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen([*command, "--port", str(port)], env=env, stderr=log)
        try:
            return _measure(port, args)
        finally:
            server.terminate()
            server.wait(timeout=60)


def _measure(port: int, args: argparse.Namespace) -> int:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    stop = time.monotonic() + args.seconds
    seen = {"reconnects": 0, "408": 0}
    trickler = threading.Thread(
        target=_trickle, args=(port, args.clients, args.period, stop, seen), daemon=True
    )
    trickler.start()
    time.sleep(min(3.0, args.seconds / 4))  # every trickler connected and sent a first byte
    ok = failed = 0
    latencies: list[float] = []
    while time.monotonic() < stop - min(10.0, args.seconds / 4):
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/_/health")
            answer = conn.getresponse()
            answer.read()
            conn.close()
            if answer.status == 200:
                ok += 1
                latencies.append(time.monotonic() - t0)
            else:
                failed += 1
        except OSError:
            failed += 1
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
    trickler.join()
    latencies.sort()
    timing = (
        f", latency median {latencies[len(latencies) // 2] * 1000:.0f} ms"
        f" max {latencies[-1] * 1000:.0f} ms"
        if latencies
        else ""
    )
    print(
        f"{args.clients} tricklers, a byte every {args.period:g} s for {args.seconds:g} s: "
        f"health {ok} answered, {failed} failed{timing}; "
        f"tricklers reconnected {seen['reconnects']} times, saw {seen['408']} 408s"
    )
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
