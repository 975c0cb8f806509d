"""Faults mid-run: the exact answer or a clear error in bounded time, and nothing left behind.

Each test runs on a server of this module's own (the session ones stay untouched): one of its
own if it kills it, else one the module's tests share, each leaving it empty. Each starts a real
distributed inference. Servers are killed (SIGKILL, like a crash) from the coordinator's progress
callback once the workers are past the first layers and come back on the same port with the same
data; workers are killed or hung from inside. Whatever happened, the run's frames, objects and
consumers are gone afterwards: a failed run cleans up like a successful one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

import fsd.worker
from fsd.channels import ChannelConfig
from fsd.channels.nats import NatsOptions
from fsd.channels.s3 import S3Options
from fsd.coordinator import RunConfig, run
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.errors import FsdError, WorkerError
from fsd.model import Images, Network

BOUND = 90.0  # seconds: a run through an outage must end (either way) well within this


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A server for one test that kills it."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
    """A server for one test that kills it."""
    server = S3Server().start(timeout=30.0)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def kept_nats() -> Iterator[NatsServer]:
    """This module's own server for the tests that fail runs but leave the server up: each
    ends by checking that nothing is left on it, so the next one starts from an empty one."""
    with NatsServer() as server:
        yield server


@pytest.fixture(scope="module")
def kept_s3() -> Iterator[S3Server]:
    """As :func:`kept_nats`, for S3."""
    server = S3Server().start(timeout=30.0)
    try:
        yield server
    finally:
        server.stop()


class _Crash:
    """A progress callback that kills the server once, past ``after`` layers, and restarts it
    after ``down`` seconds (never, when ``down`` is None)."""

    def __init__(self, server: NatsServer | S3Server, after: int, down: float | None) -> None:
        self.server = server
        self.after = after
        self.down = down
        self.at_layer: int | None = None

    def __call__(self, layer: int) -> None:
        if self.at_layer is None and layer >= self.after:
            self.at_layer = layer
            self.server.kill()
            if self.down is not None:
                time.sleep(self.down)
                self.server.start(timeout=30.0)


def _nats_config(server: NatsServer, retry: float) -> RunConfig:
    return RunConfig(
        workers=4,
        channel="nats",
        partition="min-comm",
        layer_timeout=30,
        timeout=BOUND,
        channel_config=ChannelConfig(
            "nats", server.url, retry_seconds=retry, options=NatsOptions(token=server.token)
        ),
    )


def _s3_config(server: S3Server, retry: float) -> RunConfig:
    return RunConfig(
        workers=2,
        channel="s3",
        partition="min-comm",
        layer_timeout=40,
        timeout=BOUND,
        channel_config=ChannelConfig(
            "s3",
            server.endpoint,
            retry_seconds=retry,
            options=S3Options(access_key=server.access_key, secret_key=server.secret_key),
        ),
    )


@pytest.mark.parametrize(("kind", "retry", "down"), [("nats", 20, 1.0), ("s3", 30, 0.5)])
def test_server_crash_mid_run_gives_the_exact_answer(
    kind: str,
    retry: float,
    down: float,
    request: pytest.FixtureRequest,
    shared_net: Network,
    shared_images: Images,
) -> None:
    server = request.getfixturevalue(f"own_{kind}")
    cfg = _nats_config(server, retry) if kind == "nats" else _s3_config(server, retry)
    crash = _Crash(server, after=5, down=down)
    t0 = time.monotonic()
    result = run(shared_net, shared_images.matrix, cfg, crash)
    assert crash.at_layer is not None and crash.at_layer < shared_net.depth
    assert result.categories.tolist() == shared_images.truth[120].tolist()
    assert time.monotonic() - t0 < BOUND
    _nothing_left(server)


@pytest.mark.parametrize("kind", ["nats", "s3"])
def test_server_that_stays_down_gives_a_clear_error_in_bounded_time(
    kind: str, request: pytest.FixtureRequest, shared_net: Network, shared_images: Images
) -> None:
    server = request.getfixturevalue(f"own_{kind}")
    cfg = _nats_config(server, 3) if kind == "nats" else _s3_config(server, 3)
    cfg.layer_timeout = 8
    crash = _Crash(server, after=5, down=None)
    t0 = time.monotonic()
    with pytest.raises(FsdError) as info:
        run(shared_net, shared_images.matrix, cfg, crash)
    elapsed = time.monotonic() - t0
    assert crash.at_layer is not None
    assert elapsed < 30, f"took {elapsed:.1f} s to give up"
    message = str(info.value)
    assert kind in message or "worker" in message


def _nothing_left(server: NatsServer | S3Server) -> None:
    """No frame, object or consumer of any run remains on ``server``."""
    if isinstance(server, S3Server):
        assert list(server.client().list_objects("fsd", "fsd/", recursive=True)) == []
        return

    async def look() -> tuple[list[str], int]:
        nc = await nats.connect(server.url, token=server.token)
        try:
            js = nc.jetstream()
            consumers = [c.name for c in await js.consumers_info("FSD")]
            return consumers, (await js.stream_info("FSD")).state.messages
        finally:
            await nc.close()

    assert asyncio.run(look()) == ([], 0)


def _config(kind: str, server: NatsServer | S3Server) -> RunConfig:
    if isinstance(server, NatsServer):
        return _nats_config(server, 20)
    return _s3_config(server, 30)


class _Sabotage:
    """Replaces fsd.worker._assemble in forked workers: worker ``victim`` dies (SIGKILL) or
    hangs after ``after`` layers; the others run normally."""

    def __init__(self, victim: int, after: int, how: str) -> None:
        self.real = fsd.worker._assemble
        self.victim, self.after, self.how = victim, after, how
        self.calls = 0

    def __call__(self, task: Any, got: Any, layer: Any) -> Any:
        if task.worker == self.victim:
            self.calls += 1
            if self.calls > self.after and self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.calls > self.after and self.how == "hang":
                time.sleep(3600)
            if self.calls > self.after and self.how == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)  # as `kill -STOP`: alive, silent
        return self.real(task, got, layer)


@pytest.mark.parametrize("kind", ["nats", "s3"])
@pytest.mark.parametrize(
    ("how", "victim", "expected"),
    [("kill", 1, r"worker 1 failed: .*-9"), ("hang", 0, r"worker 0 failed: stopped responding")],
)
def test_a_failed_run_leaves_nothing_behind(
    kind: str,
    how: str,
    victim: int,
    expected: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    shared_net: Network,
    shared_images: Images,
) -> None:
    """A worker killed mid-run, or one that hangs until the whole run times out."""
    server = request.getfixturevalue(f"kept_{kind}")
    monkeypatch.setattr(fsd.worker, "_assemble", _Sabotage(victim, after=10, how=how))
    cfg = _config(kind, server)
    cfg.timeout = 6  # the whole run; a layer may wait longer, so a hang ends the run here
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=expected):
        run(shared_net, shared_images.matrix, cfg)
    assert time.monotonic() - t0 < BOUND
    _nothing_left(server)


@pytest.mark.parametrize("kind", ["nats", "s3"])
def test_a_failed_replica_ends_every_replica_and_leaves_nothing(
    kind: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    shared_net: Network,
    shared_images: Images,
) -> None:
    """Two replicas of two partitions each (R = 2, P = 2): worker 1 of a replica dies; the run
    fails naming it, in bounded time, and neither replica's run leaves anything behind."""
    server = request.getfixturevalue(f"kept_{kind}")
    monkeypatch.setattr(fsd.worker, "_assemble", _Sabotage(1, after=10, how="kill"))
    cfg = _config(kind, server)
    cfg.workers, cfg.partitions = 4, 2
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 1 failed: .*-9"):
        run(shared_net, shared_images.matrix, cfg)
    assert time.monotonic() - t0 < BOUND
    _nothing_left(server)


def test_a_stopped_worker_is_named_by_those_waiting_for_it(
    monkeypatch: pytest.MonkeyPatch, shared_net: Network, shared_images: Images
) -> None:
    """Worker 2 is SIGSTOPped mid-run and the others' layer timeout fires before the run's
    deadline: they say whom they waited for, and the failure names worker 2 (the deadline
    firing first: test_a_stopped_worker_is_one_line_from_the_cli)."""
    monkeypatch.setattr(fsd.worker, "_assemble", _Sabotage(2, after=5, how="stop"))
    cfg = RunConfig(workers=4, channel="local", timeout=60, layer_timeout=2)
    expected = r"^worker 2 failed: stopped responding: workers 0, 1 and 3 timed out waiting for "
    with pytest.raises(WorkerError, match=expected + r"its layer-\d+ activations$"):
        run(shared_net, shared_images.matrix[:500], cfg)


def _child_named(parent: int, name: str) -> int:
    """The pid of ``parent``'s child whose process name is ``name`` (fsd names its workers)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if comm == name and ppid == parent:
            return int(entry.name)
    raise AssertionError(f"no child {name} of {parent}")


def test_a_stopped_worker_is_one_line_from_the_cli(shared_dir: Path) -> None:
    """``kill -STOP`` on one forked worker of ``fsd run``: one line names it, no traceback."""
    command = [sys.executable, "-m", "fsd.cli", "run", "--data", str(shared_dir)]
    command += ["--workers", "4", "--partitions", "4", "--timeout", "6"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stderr is not None
        lines = []
        for line in p.stderr:  # "layers K/120" once K >= 1: mid-run
            lines.append(line)
            if line.startswith("layers ") and not line.startswith("layers 0/"):
                os.kill(_child_named(p.pid, "fsd-worker-2"), signal.SIGSTOP)
                break
        _, rest = p.communicate(timeout=BOUND)
    told = [x for x in (*lines, *rest.splitlines(True)) if not x.startswith("layers ")]
    assert p.returncode == 1
    assert len(told) == 1, "".join(told)
    # named by the peers that gave up waiting for it (their deadline comes before the run's)
    assert told[0].startswith("fsd: failed: worker 2 failed: stopped responding: "), told[0]
    assert "still running" not in told[0]


#: fsd run in a fresh interpreter whose worker 1 fails in its 4th layer (the others then wait)
_FAILING_RUN = """
import sys
import fsd.cli, fsd.worker
real = fsd.worker._assemble
def failing(task, got, layer):
    if task.worker == 1 and got and min(m.header.layer for m in got.values()) == 4:
        raise ValueError("planted failure")
    return real(task, got, layer)
fsd.worker._assemble = failing
sys.exit(fsd.cli.main(sys.argv[1:]))
"""


def test_a_worker_failure_is_one_line_without_v() -> None:
    """A worker's failure is told once, by the coordinator, in one line; -v adds its story."""
    args = ["run", "--workers", "4", "--partitions", "4", "--layers", "8", "--json"]
    last = "fsd: failed: worker 1 failed: ValueError: planted failure"
    for flags in ([], ["-v"]):
        done = subprocess.run(
            [sys.executable, "-c", _FAILING_RUN, *flags, *args],
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == last, done.stderr
        if flags:
            assert "Traceback" in done.stderr and "planted failure" in done.stderr
        else:
            assert done.stderr == last + "\n"
