"""The ``local`` transport: per-run mailboxes of files on tmpfs, for workers on one machine.

A message is one file per sealed chunk frame at ``<root>/<run>/<dst>/<kind>.<layer>.<src>.<chunk>``,
written to a temporary name and renamed, so a reader never sees half a frame and a re-sent message
simply replaces itself. The mailbox root is private to its user (mode 0700). Receivers know whom
they wait for and read exactly those keys (no listing), like the object-store transport; a datagram
"doorbell" per endpoint wakes a waiting receiver instead of polling. There is no broker process: on
a small machine every core goes to the workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from fsd import lifetime
from fsd.channels.base import Channel, ChannelConfig, Slot
from fsd.errors import ChannelError

log = logging.getLogger(__name__)

_BELL_WAIT = 0.05  # upper bound on a missed doorbell's cost


def _default_root() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


class LocalMailbox:
    """Creates (and finally removes) the mailbox root; ``address`` goes into ChannelConfig."""

    def __init__(self, parent: str | None = None) -> None:
        # a mailbox whose owner died (SIGKILL) is removed by the next one made
        self.address = lifetime.make_workdir("fsd-mailbox-", parent or _default_root())

    def close(self) -> None:
        shutil.rmtree(self.address, ignore_errors=True)

    def __enter__(self) -> LocalMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def mailbox(config: ChannelConfig) -> Iterator[ChannelConfig]:
    """A mailbox root for one run (what ``local`` has instead of a server), removed after."""
    with LocalMailbox() as made:
        yield dataclasses.replace(config, address=made.address)


class LocalChannel(Channel):
    """An endpoint reading its own mailbox folder and writing into its peers'."""

    SERVER = "a mailbox folder"
    EMBEDDED = "fsd.channels.local:mailbox"  # no server: a folder, part of the runtime

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

    def _box(self, endpoint: int) -> Path:
        path = self._run_dir / str(endpoint)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    @staticmethod
    def _name(slot: Slot) -> str:
        return f"{slot.kind}.{slot.layer}.{slot.src}.{slot.chunk}"

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        boxes = set()
        for slot, data in frames:
            box = self._box(slot.dst)
            name = self._name(slot)
            tmp = box / f".{name}.{os.getpid()}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, box / name)
            except OSError as exc:
                raise ChannelError(f"cannot write to local mailbox {box}: {exc}") from None
            boxes.add(box)
        for box in boxes:
            with contextlib.suppress(OSError):  # receiver not started yet, or bell queue full
                self._ring.sendto(b"!", str(box) + ".bell")

    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        """Read (and consume) the wanted files that are there; else wait for a doorbell."""
        while True:
            accepted = False
            for slot in wanted:
                path = self._inbox / self._name(slot)
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise ChannelError(f"cannot read local mailbox {path}: {exc}") from None
                path.unlink(missing_ok=True)
                accepted = self._deliver(slot, data) or accepted
            left = deadline - time.monotonic()
            if accepted or left <= 0:
                return
            self._wait_bell(min(left, _BELL_WAIT))

    def _wait_bell(self, seconds: float) -> None:
        self._bell.settimeout(seconds)
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

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:
        """Remove everything left of this run (the coordinator calls it at the end)."""
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def close(self) -> None:
        for sock in (self._bell, self._ring):
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(OSError):
            os.unlink(str(self._inbox) + ".bell")
