"""The ``local`` transport: per-run mailboxes of files on tmpfs, for workers on one machine.

A message is one file per chunk at ``<root>/<run>/<dst>/<kind>.<layer>.<src>.<chunk>``, written to
a temporary name and renamed, so a reader never sees half a frame and a re-sent message simply
replaces itself. Receivers know whom they wait for and read exactly those keys (no listing), like
the object-store transport; a datagram "doorbell" per endpoint wakes a waiting receiver instead of
polling. There is no broker process: on a small machine every core goes to the workers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from fsd import wire
from fsd.channels.base import Channel, ChannelConfig
from fsd.errors import ChannelError, WireError

log = logging.getLogger(__name__)

_BELL_WAIT = 0.05  # upper bound on a missed doorbell's cost


def _default_root() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


class LocalMailbox:
    """Creates (and finally removes) the mailbox root; ``address`` goes into ChannelConfig."""

    def __init__(self, parent: str | None = None) -> None:
        self.address = tempfile.mkdtemp(prefix="fsd-mailbox-", dir=parent or _default_root())

    def close(self) -> None:
        shutil.rmtree(self.address, ignore_errors=True)

    def __enter__(self) -> LocalMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalChannel(Channel):
    """An endpoint reading its own mailbox folder and writing into its peers'."""

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        if not config.address or not Path(config.address).is_dir():
            raise ChannelError(f"local mailbox folder not found: {config.address!r}")
        self._run_dir = Path(config.address) / run.hex()
        self._inbox = self._box(me)
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.bind(str(self._inbox) + ".bell")
        self._ring = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._ring.setblocking(False)
        self._assembler = wire.Reassembler()
        self._seen: set[tuple[int, int, int]] = set()

    def _box(self, endpoint: int) -> Path:
        path = self._run_dir / str(endpoint)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def send(self, msg: wire.Message) -> int:
        h = msg.header
        box = self._box(h.dst)
        frame = wire.encode(msg, compress=self.config.compress)
        total = 0
        for chunk, piece in enumerate(wire.split(frame, self.config.max_frame)):
            name = f"{int(h.kind)}.{h.layer}.{h.src}.{chunk}"
            tmp = box / f".{name}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(piece)
                os.replace(tmp, box / name)
            except OSError as exc:
                raise ChannelError(f"cannot write to local mailbox {box}: {exc}") from None
            total += len(piece)
            self.stats.messages += 1
            self.stats.requests += 1
        self.stats.bytes += total
        with contextlib.suppress(OSError):  # receiver not started yet, or bell queue full: fine
            self._ring.sendto(b"!", str(box) + ".bell")
        return total

    def _take(self, kind: int, layer: int, src: int) -> wire.Message | None:
        """The complete message for one key, if all its chunks are there; consumes the files."""
        chunk = 0
        paths = []
        msg = None
        while msg is None:
            path = self._inbox / f"{kind}.{layer}.{src}.{chunk}"
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise ChannelError(f"cannot read local mailbox {path}: {exc}") from None
            paths.append(path)
            try:
                header = wire.peek_header(data)
                if header.run != self.run or header.dst != self.me or header.src != src:
                    raise WireError("frame does not belong to this mailbox key")
                msg = self._assembler.add(data)
            except WireError as exc:
                log.warning("endpoint %d dropped invalid frame %s: %s", self.me, path.name, exc)
                path.unlink(missing_ok=True)
                return None
            chunk += 1
        for path in paths:
            path.unlink(missing_ok=True)
        return msg

    def collect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        todo = [s for s in sources if (int(kind), layer, s) not in self._seen]
        got: dict[int, wire.Message] = {}
        deadline = time.monotonic() + timeout
        while True:
            for src in list(todo):
                msg = self._take(int(kind), layer, src)
                if msg is not None:
                    self._seen.add((int(kind), layer, src))
                    got[src] = msg
                    todo.remove(src)
            left = deadline - time.monotonic()
            if not todo or left <= 0:
                return got
            self._bell.settimeout(min(left, _BELL_WAIT))
            try:
                self._bell.recv(64)
                self._bell.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:  # drain: one look at the files answers every ring so far
                        self._bell.recv(64)
            except TimeoutError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINTR):
                    raise ChannelError(f"local doorbell failed: {exc}") from None

    def purge_run(self) -> None:
        """Remove everything left of this run (the coordinator calls it at the end)."""
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def close(self) -> None:
        for sock in (self._bell, self._ring):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError):
            os.unlink(str(self._inbox) + ".bell")
