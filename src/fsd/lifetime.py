"""What a process leaves on the machine lives no longer than the process.

Three mechanisms, for three ways to end:

* SIGTERM: :func:`exit_on_sigterm` turns it into ``SystemExit(143)`` so every ``with`` block
  unwinds (workers joined, servers stopped, folders removed) instead of Python's default, which
  dies on the spot and leaves everything behind.
* SIGKILL of the parent (nothing runs in it): children started with :func:`die_with_parent`
  (in ``preexec_fn``, or right after ``fork``) get SIGKILL from the kernel when it dies.
* What still stays (folders on tmpfs, weed's sockets in /tmp): work folders carry an owner
  stamp (:func:`claim`: pid, process start time and boot id, so a reused pid is not mistaken for
  the owner) and the next start removes the folders whose owners are all gone
  (:func:`reap_stale`), never one whose owner is alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

OWNER_FILE = ".fsd-owner"
EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's convention for "killed by SIGTERM"
_PR_SET_PDEATHSIG = 1
# without /proc/net/unix, a socket younger than this may be bound by a server about to listen
_SOCKET_GRACE_SECONDS = 60.0

try:  # resolved once here, so a forked child only makes the call (no loading after fork)
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal
    _prctl = None


# -- owner stamps and stale folders ---------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it is not running."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc (not Linux): existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    # the command name (field 2) is in parentheses and may contain anything: split after it
    fields = data[data.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):  # a zombie has ended, it just is not reaped yet
        return None
    return fields[19].decode() if len(fields) > 19 else "?"


def _alive(pid: int, started: str) -> bool:
    now = _start_time(pid)
    return now is not None and (now == started or "?" in (now, started))


def claim(path: str | os.PathLike[str], pids: Iterable[int] = ()) -> None:
    """Stamp the folder ``path`` as owned by this process (and ``pids``, e.g. a server child).

    The folder counts as stale once every stamped process is gone. A later ``claim`` replaces
    the stamp (a restarted server has a new pid).
    """
    lines = [f"boot {_boot_id()}", f"pidns {_pid_namespace()}"]
    for pid in (os.getpid(), *pids):
        started = _start_time(pid)
        if started is not None:
            lines.append(f"{pid} {started}")
    target = Path(path) / OWNER_FILE
    tmp = target.with_name(f"{OWNER_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, target)  # a reader sees the old stamp or the new one, never half of one


def is_stale(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` carries an owner stamp and none of its processes is alive.

    A folder without a stamp is never stale: it may be someone else's, or being created. Nor
    is one stamped in another pid namespace (a container sharing the folder): its pids mean
    nothing here.
    """
    try:
        lines = (Path(path) / OWNER_FILE).read_text().splitlines()
    except OSError:
        return False
    owners: list[tuple[int, str]] = []
    boot = None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "boot":
            boot = value
        elif key == "pidns" and value != _pid_namespace():
            return False
        elif key.isdigit() and value:
            owners.append((int(key), value))
    if boot is None or not owners:
        return False  # not a stamp we wrote
    if boot and boot != _boot_id():
        return True  # every process of an earlier boot is gone
    return not any(_alive(pid, started) for pid, started in owners)


def owner_stamp() -> str:
    """This process as one line (boot id, pid namespace, pid, start time), for what it leaves
    outside the machine's folders (a cloud queue's tag): :func:`stamp_gone` reads it back."""
    return f"{_boot_id()} {_pidns_number()} {os.getpid()} {_start_time(os.getpid()) or '?'}"


def _pidns_number() -> str:
    """The pid namespace's inode number alone (``pid:[4026531836]``: brackets are not allowed
    in a cloud tag's value)."""
    return "".join(c for c in _pid_namespace() if c.isdigit()) or "0"


def stamp_here(stamp: str) -> bool:
    """Whether :func:`owner_stamp` described a process of this machine's boot and pid namespace
    (only those can be looked at from here)."""
    parts = stamp.split(" ")
    return (
        len(parts) == 4
        and bool(parts[0])
        and re.fullmatch(r"[0-9]{1,10}", parts[2]) is not None  # a tag: hostile until checked
        and (parts[0], parts[1]) == (_boot_id(), _pidns_number())
    )


def stamp_gone(stamp: str) -> bool:
    """True if the process :func:`owner_stamp` described ran here (:func:`stamp_here`) and has
    ended. A stamp from anywhere else is never judged gone: another machine's processes cannot
    be seen from here."""
    if not stamp_here(stamp):
        return False
    _, _, pid, started = stamp.split(" ")
    return not _alive(int(pid), started)


def temp_roots() -> list[Path]:
    """Where work folders go: tmpfs (/dev/shm) when writable, and the temp dir."""
    roots = []
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        roots.append(shm)
    roots.append(Path(tempfile.gettempdir()))
    return list(dict.fromkeys(roots))


def reap_stale(prefix: str, roots: Iterable[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Remove the folders ``<root>/<prefix>*`` whose owners are all gone; return them."""
    removed = []
    for root in temp_roots() if roots is None else [Path(r) for r in roots]:
        try:
            candidates = list(root.glob(f"{prefix}*"))
        except OSError:
            continue
        for path in candidates:
            if path.is_symlink() or not path.is_dir() or not is_stale(path):
                continue
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                log.info("removed %s, left behind by a process that is gone", path)
                removed.append(path)
    return removed


def make_workdir(prefix: str, parent: str | os.PathLike[str] | None = None) -> str:
    """A fresh folder ``<parent>/<prefix>XXXX`` stamped as ours, after reaping stale ones
    (in ``parent`` and in :func:`temp_roots`)."""
    roots = temp_roots()
    if parent is not None:
        roots = list(dict.fromkeys([Path(parent), *roots]))
    reap_stale(prefix, roots)
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    claim(path)
    return path


def _bound_unix_paths() -> set[str] | None:
    """Paths some process's unix socket is bound to (this network namespace), if Linux says."""
    try:
        lines = Path("/proc/net/unix").read_text(errors="replace").splitlines()[1:]
    except OSError:
        return None
    return {fields[7] for line in lines if len(fields := line.split(None, 7)) == 8}


def _nobody_listens(path: Path, info: os.stat_result, bound: set[str] | None) -> bool:
    if bound is not None:  # exact: bound (even if not listening yet) means in use
        return str(path) not in bound
    if time.time() - info.st_mtime < _SOCKET_GRACE_SECONDS:
        return False  # may be bound by a server that is not listening yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
    return False


def reap_stale_sockets(pattern: str, keep: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove our unix socket files matching the glob ``pattern`` that no process serves.

    Only sockets owned by our uid; ``keep`` may spare more.
    """
    removed = []
    bound = _bound_unix_paths()
    where = Path(pattern)
    for path in where.parent.glob(where.name):
        try:
            info = path.lstat()
        except OSError:
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.geteuid():
            continue
        if (keep is not None and keep(path)) or not _nobody_listens(path, info, bound):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    if removed:
        log.info("removed %d unix sockets of servers that are gone", len(removed))
    return removed


# -- children die with their parent --------------------------------------------------------------


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (thread) dies.

    Call it in the child: in ``preexec_fn`` or right after ``fork``. Linux only; elsewhere a
    no-op. The signal follows the *thread* that forked: start long-lived children from the main
    thread (see :func:`preexec_die_with_parent`).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def preexec_die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties the child's life to ours, or None when that cannot work.

    None off Linux, and off the main thread: the kernel would kill the child when the starting
    thread ends, which for a helper thread is long before the server should stop.
    """
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent()
        if os.getppid() != parent:  # we died between fork and prctl: follow now
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


# -- SIGTERM: a clean exit -------------------------------------------------------------------------


class Terminated(SystemExit):
    """Raised in the main thread by SIGTERM (see :func:`exit_on_sigterm`); exit code 143.

    A SystemExit, so no ``except Exception`` swallows it on the way out.
    """

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)


@contextlib.contextmanager
def exit_on_sigterm(prog: str = "fsd") -> Iterator[None]:
    """Within the block, SIGTERM writes one line to stderr and raises :class:`Terminated`.

    A second SIGTERM during the clean-up is ignored (SIGKILL remains the hard stop). A forked
    child that inherited the handler gets the default action back. Off the main thread, where
    Python cannot set handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    line = f"{prog}: terminated (SIGTERM): stopping workers and servers\n".encode()
    owner = os.getpid()
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if os.getpid() != owner:  # a forked child: die as if no handler were set
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if fired:  # already unwinding
            return
        fired = True
        with contextlib.suppress(OSError):  # os.write: never re-enter a buffered sys.stderr
            os.write(2, line)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
