"""``fsd run`` with an embedded server, stopped mid-run by a signal: nothing stays behind.

SIGTERM: the run unwinds (workers, server, work dirs) and exits 143 with one line. SIGKILL:
nothing runs in ``fsd run``, yet its children die with it (parent-death signal), and the next
start of a server removes the work dir and sockets it left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fsd
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.localstack import LocalStack
from proctree import alive, cmdline, descendants, require_proc
from waiting import wait_for

SRC = str(Path(fsd.__file__).resolve().parents[1])
SERVER = {"nats": "nats-server", "s3": "weed"}
# generated in seconds, and its inference lasts seconds: long enough to be caught mid-run
RUN = ["run", "--workers", "2", "--neurons", "1024", "--layers", "960", "--images", "1000"]


def _start(channel: str) -> tuple[subprocess.Popen[str], int, list[int]]:
    """``fsd run`` caught mid-run: its server and both workers up. Returns it, server, all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSD_NATS", "FSD_S3"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd.cli", *RUN, "--channel", channel],
        env={**env, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: dict[str, list[int]] = {}

    def mid_run() -> bool:
        assert proc.poll() is None, f"fsd run ended early: {proc.communicate()[1][-2000:]}"
        kids = descendants(proc.pid)
        names = {pid: Path(cmdline(pid)[0]).name if cmdline(pid) else "" for pid in kids}
        found["server"] = [pid for pid, name in names.items() if name == SERVER[channel]]
        found["workers"] = [pid for pid in kids if "fsd.cli" in cmdline(pid)]
        found["all"] = kids
        return len(found["server"]) == 1 and len(found["workers"]) == 2

    wait_for(f"fsd run --channel {channel} mid-run", mid_run, 120)
    return proc, found["server"][0], found["all"]


def _workdir(server: int) -> Path:
    """The server's work dir, from its command line."""
    for arg in cmdline(server):
        if arg.endswith("nats.conf"):
            return Path(arg).parent
        if arg.startswith("-dir="):
            return Path(arg[len("-dir=") :]).parent
    raise AssertionError(f"no work dir in {cmdline(server)}")


def _sockets(server: int) -> list[Path]:
    """weed's unix sockets (named after its ports) that exist now."""
    ports = [a.split("=")[1] for a in cmdline(server) if a.split("=")[0].endswith(".port")]
    ports += [str(int(p) + 10000) for p in ports]
    return [s for p in ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]


@pytest.mark.parametrize("channel", ["nats", "s3"])
def test_sigterm_mid_run_stops_everything_and_exits_143(channel: str) -> None:
    require_proc()
    proc, server, everything = _start(channel)
    workdir, sockets = _workdir(server), _sockets(server)
    assert workdir.is_dir() and (channel == "nats" or sockets)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    lines = err.splitlines()
    said = "fsd: terminated (SIGTERM): stopping workers and servers"
    assert said in lines, err[-2000:]
    # said when the signal came; all that may follow is a server slow to stop (killed after
    # 10 s, which a loaded machine sometimes sees) or the last progress line of a replica's
    # thread caught mid-write, never an error
    after = lines[lines.index(said) + 1 :]
    harmless = ("WARNING fsd.services:", "layers ")
    assert all(line.startswith(harmless) for line in after), after
    assert "Traceback" not in err
    wait_for("no process of the run left", lambda: not any(alive(p) for p in everything), 10)
    assert not workdir.exists()
    assert not [s for s in sockets if s.exists()]


@pytest.mark.parametrize("channel", ["nats", "s3"])
def test_sigkill_mid_run_children_die_and_next_start_reaps(channel: str) -> None:
    require_proc()
    proc, server, everything = _start(channel)
    workdir, sockets = _workdir(server), _sockets(server)
    proc.kill()
    proc.communicate()
    wait_for("the run's children died with it", lambda: not any(alive(p) for p in everything), 10)
    assert workdir.is_dir()  # nothing ran to remove it...
    later = NatsServer() if channel == "nats" else S3Server()  # ...the next start does
    later.stop()
    assert not workdir.exists()
    assert not [s for s in sockets if s.exists()]


def test_sigkill_of_the_local_stack_takes_its_functions_and_servers_along() -> None:
    require_proc()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd.localstack", "--workers", "1"],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # it logs "try: curl ..." once it serves (it exits if it cannot)
        if "try:" in line:
            break
    else:
        pytest.fail(f"the local stack did not start: {proc.communicate()[1][-2000:]}")
    functions = [p for p in descendants(proc.pid) if "index.py" in " ".join(cmdline(p))]
    assert len(functions) == 2  # a worker and a coordinator
    everything = descendants(proc.pid)
    environ = Path(f"/proc/{functions[0]}/environ").read_bytes().split(b"\0")
    stack_dir = Path(next(v for v in environ if v.startswith(b"FSD_STACK_DIR="))[14:].decode())
    assert stack_dir.is_dir()
    proc.kill()
    proc.communicate()
    wait_for("the stack's processes died", lambda: not any(alive(p) for p in everything), 10)
    assert stack_dir.is_dir()
    LocalStack(1).stop()  # a later stack removes what the killed one left
    assert not stack_dir.exists()


def _mailboxes(owner: int) -> set[Path]:
    """The local channel's mailbox folders stamped by process ``owner`` (not another run's,
    which a test running beside this one may make meanwhile)."""
    from fsd.channels.local import _default_root
    from fsd.lifetime import OWNER_FILE

    def owned(box: Path) -> bool:
        try:
            lines = (box / OWNER_FILE).read_text().splitlines()
        except OSError:
            return False
        return any(line.split(" ")[0] == str(owner) for line in lines)

    return {box for box in Path(_default_root()).glob("fsd-mailbox-*") if owned(box)}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_local_run_leaves_no_mailbox_behind(sig: signal.Signals) -> None:
    """The local channel's mailbox folder goes with the run (SIGTERM) or with the next one made
    after its owner died (SIGKILL)."""
    from fsd.channels.local import LocalMailbox

    require_proc()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsd.cli", *RUN, "--channel", "local"],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: dict[str, Any] = {}

    def mid_run() -> bool:
        assert proc.poll() is None, f"fsd run ended early: {proc.communicate()[1][-2000:]}"
        found["all"] = descendants(proc.pid)
        found["boxes"] = _mailboxes(proc.pid)
        workers = [pid for pid in found["all"] if "fsd.cli" in cmdline(pid)]
        return len(workers) == 2 and len(found["boxes"]) == 1

    wait_for("fsd run --channel local mid-run", mid_run, 120)
    (box,) = found["boxes"]
    try:
        proc.send_signal(sig)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    wait_for("no process of the run left", lambda: not any(alive(p) for p in found["all"]), 10)
    if sig == signal.SIGKILL:
        assert box.is_dir()  # nothing ran to remove it...
        LocalMailbox().close()  # ...the next mailbox made does
    assert not box.exists()
