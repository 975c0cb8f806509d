"""Reading an HTTP answer from another service with a byte cap and a total deadline.

A client's read timeout bounds each wait for the next byte, not the whole body: a server that
trickles a byte a second, or streams without end, would hold the caller forever. Every client of
a gateway or Prometheus reads its answers through :func:`read_within` instead.
"""

from __future__ import annotations

import time
from typing import Protocol


class Readable(Protocol):
    """What :func:`read_within` needs of a response (urllib3's, with ``preload_content=False``)."""

    def read1(self, amt: int | None = None) -> bytes: ...


def read_within(response: Readable, limit: int, deadline: float) -> bytes:
    """The body, up to ``limit`` + 1 bytes (more than ``limit``: the caller refuses it), read by
    ``deadline`` (a :func:`time.monotonic` value); raises :class:`TimeoutError` past it."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = response.read1(min(1 << 16, limit + 1 - size))  # what has come, not a full block
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
