"""fsd.lifetime with real processes: owner stamps, reaping, parent-death signal, SIGTERM exit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import fsd
from fsd import lifetime
from proctree import alive, require_proc
from waiting import wait_for

SRC = str(Path(fsd.__file__).resolve().parents[1])


def _python(code: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_only_folders_whose_owners_are_all_gone_are_reaped(tmp_path: Path) -> None:
    require_proc()
    prefix = "fsd-test-"
    # a real process makes a folder and exits: its folder is stale
    child = _python(
        f"from fsd import lifetime; print(lifetime.make_workdir({prefix!r}, {str(tmp_path)!r}))"
    )
    dead_owner = Path(child.communicate(timeout=30)[0].strip())
    assert child.returncode == 0 and dead_owner.is_dir()
    ours = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))  # we live: kept
    lifetime.claim(ours)
    unstamped = tmp_path / f"{prefix}unstamped"  # not ours to judge: kept
    unstamped.mkdir()
    reused = tmp_path / f"{prefix}reused"  # our pid, but another process's start time: stale
    reused.mkdir()
    (reused / lifetime.OWNER_FILE).write_text(f"boot {lifetime._boot_id()}\n{os.getpid()} 1\n")
    earlier_boot = tmp_path / f"{prefix}rebooted"
    earlier_boot.mkdir()
    (earlier_boot / lifetime.OWNER_FILE).write_text(f"boot not-this-one\n{os.getpid()} 1\n")
    with_live_child = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # the owner stamp names a second process (a server) that still runs: kept
        (with_live_child / lifetime.OWNER_FILE).write_text(
            f"boot {lifetime._boot_id()}\n1999999999 1\n{sleeper.pid} "
            f"{lifetime._start_time(sleeper.pid)}\n"
        )
        # stamped in another pid namespace (a container sharing the folder): cannot judge, kept
        foreign = tmp_path / f"{prefix}container"
        foreign.mkdir()
        (foreign / lifetime.OWNER_FILE).write_text(
            f"boot {lifetime._boot_id()}\npidns pid:[1]\n1999999999 1\n"
        )
        other = tmp_path / "not-fsd-test-x"
        other.mkdir()
        (other / lifetime.OWNER_FILE).write_text(f"boot {lifetime._boot_id()}\n1999999999 1\n")

        removed = lifetime.reap_stale(prefix, [tmp_path])

        assert set(removed) == {dead_owner, reused, earlier_boot}
        assert not dead_owner.exists() and not reused.exists() and not earlier_boot.exists()
        assert ours.is_dir() and unstamped.is_dir() and with_live_child.is_dir()
        assert foreign.is_dir() and other.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    # once the server child is gone too, the next folder made there takes the stale one away
    fresh = Path(lifetime.make_workdir(prefix, tmp_path))
    assert not with_live_child.exists()
    assert sorted(p.name for p in tmp_path.glob(f"{prefix}*")) == sorted(
        [ours.name, unstamped.name, foreign.name, fresh.name]
    )


def test_sockets_nobody_serves_are_removed_served_ones_kept(tmp_path: Path) -> None:
    require_proc()
    served = socket.socket(socket.AF_UNIX)
    served.bind(str(tmp_path / "served.sock"))
    served.listen()
    bound = socket.socket(socket.AF_UNIX)  # bound, not listening yet: a server starting up
    bound.bind(str(tmp_path / "starting.sock"))
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()  # its file stays, as after a SIGKILL
    (tmp_path / "plain.sock").write_text("not a socket")
    try:
        removed = lifetime.reap_stale_sockets(str(tmp_path / "*.sock"))
    finally:
        served.close()
        bound.close()
    assert removed == [tmp_path / "dead.sock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plain.sock",
        "served.sock",
        "starting.sock",
    ]


@pytest.mark.parametrize("tied", [True, False])
def test_children_die_with_their_parent(tied: bool) -> None:
    require_proc()
    parent = _python(
        f"""
        import subprocess, time
        from fsd import lifetime
        hook = lifetime.preexec_die_with_parent() if {tied} else None
        child = subprocess.Popen(["sleep", "120"], preexec_fn=hook)
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert alive(child)
        parent.kill()  # SIGKILL: nothing runs in the parent
        parent.wait()
        if tied:
            wait_for(f"child {child} gone after its parent", lambda: not alive(child), 10)
        else:  # the control: without the hook, the child is orphaned and lives on
            assert alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    parent.communicate()


def test_sigterm_unwinds_and_exits_143_with_one_line() -> None:
    proc = _python(
        """
        import time
        from fsd import lifetime
        with lifetime.exit_on_sigterm():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                print("unwound", flush=True)
        """
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == lifetime.EXIT_TERMINATED == 143
    assert out == "unwound\n"
    assert err.splitlines() == ["fsd: terminated (SIGTERM): stopping workers and servers"]


def test_forked_child_keeps_no_handler_of_its_parent() -> None:
    proc = _python(
        """
        import os, signal, time
        from fsd import lifetime
        with lifetime.exit_on_sigterm():
            ready, tell = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.write(tell, b"!")  # (a signal before the child runs Python code is lost)
                time.sleep(60)
                os._exit(0)
            os.read(ready, 1)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        """
    )
    out, err = proc.communicate(timeout=30)
    assert (out, err, proc.returncode) == ("True\n", "", 0)


def test_an_owner_stamp_read_back_from_a_tag_is_judged_only_when_well_formed() -> None:
    """A queue's owner tag is written by whoever holds SQS rights: only a stamp of this boot
    and pid namespace with a plain pid is judged; a live owner is never taken for gone."""
    mine = lifetime.owner_stamp()
    assert lifetime.stamp_here(mine) and not lifetime.stamp_gone(mine)
    boot, pidns, _, started = mine.split(" ")
    for hostile in (
        f"{boot} {pidns} {'9' * 400} {started}",  # a pid no process has
        f"{boot} {pidns} \uff11\uff12 {started}",  # fullwidth digits
        f"{boot} {pidns} -1 {started}",
        f"other-boot {pidns} 1 {started}",
        "",
        "a b c",
    ):
        assert not lifetime.stamp_here(hostile) and not lifetime.stamp_gone(hostile), hostile
