"""Faults mid-run: the exact answer or a clear error in bounded time, and nothing left behind.

Each test owns its server (the session ones stay untouched) and starts a real distributed
inference. Servers are killed (SIGKILL, like a crash) from the coordinator's progress callback once
the workers are past the first layers and come back on the same port with the same data; workers
are killed or hung from inside. Whatever happened, the run's frames, objects and consumers are
gone afterwards: a failed run cleans up like a successful one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import nats
import pytest

import fsd.worker
from fsd.channels import ChannelConfig
from fsd.coordinator import RunConfig, run
from fsd.errors import FsdError, WorkerError
from fsd.model import Images, Network
from fsd.services import NatsServer, S3Server

BOUND = 90.0  # seconds: a run through an outage must end (either way) well within this


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator[S3Server]:
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
        channel_config=ChannelConfig("nats", server.url, token=server.token, retry_seconds=retry),
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
            access_key=server.access_key,
            secret_key=server.secret_key,
            retry_seconds=retry,
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
        return self.real(task, got, layer)


@pytest.mark.parametrize("kind", ["nats", "s3"])
@pytest.mark.parametrize(
    ("how", "victim", "expected"),
    [("kill", 1, r"worker 1 failed: .*-9"), ("hang", 0, r"worker \d failed: timed out")],
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
    server = request.getfixturevalue(f"own_{kind}")
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
    server = request.getfixturevalue(f"own_{kind}")
    monkeypatch.setattr(fsd.worker, "_assemble", _Sabotage(1, after=10, how="kill"))
    cfg = _config(kind, server)
    cfg.workers, cfg.partitions = 4, 2
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"worker 1 failed: .*-9"):
        run(shared_net, shared_images.matrix, cfg)
    assert time.monotonic() - t0 < BOUND
    _nothing_left(server)
