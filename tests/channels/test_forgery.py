"""Forged frames on a live run: an attacker who can write to the transport but lacks the
deployment secret changes nothing, and every forged frame a receiver saw is counted.

The attacker has the server's credentials (it can publish on any subject, write any object) and
knows the run id (as it would by watching subject or key names). Before the run it plants
well-formed frames built with ``fsd.wire`` for the second half of the layers (empty activations:
the attack that, without authentication, made the run answer 0 of 73 categories), forged inputs,
results and ABORTs; during the run it re-sends what it sees with a flipped byte, truncated, or on
another subject. The answer must be exact, and ``frames_rejected`` must count the forgeries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
import types
import uuid

import nats
import numpy as np
import pytest
from nats.aio.msg import Msg

import fsd.coordinator
from fsd import auth, wire
from fsd.channels import COORDINATOR, ChannelConfig, open_channel
from fsd.channels.nats import NatsOptions
from fsd.channels.s3 import S3Options
from fsd.coordinator import RunConfig, run
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.model import Images, Network

WORKERS = 4
FIRST_FORGED_LAYER = 60
EMPTY_ACT: list[np.ndarray] = [
    np.empty(0, np.uint32),
    np.empty(0, np.uint32),
    np.empty(0, np.uint16),
]


def _forgeries(run_id: bytes, depth: int) -> list[tuple[wire.Header, bytes]]:
    """Everything planted before the run: (header, frame bytes) for each slot."""
    wrong = auth.frame_key(auth.new_secret(), run_id)
    planted = []

    def plant(header: wire.Header, arrays: list[np.ndarray], sealed: bool) -> None:
        frame = wire.encode(wire.Message(header, arrays))
        planted.append((header, wire.seal(frame, wrong) if sealed else frame))

    for layer in range(FIRST_FORGED_LAYER, depth + 1):
        for dst in range(WORKERS):
            for src in range(WORKERS):
                if src != dst:  # half well-formed and unsealed, half sealed with a wrong key
                    header = wire.Header(wire.Kind.ACT, run_id, layer, src, dst)
                    plant(header, [*EMPTY_ACT, np.empty(0, np.float32)], sealed=layer % 2 == 0)
    for p in range(WORKERS):
        empty_input: list[np.ndarray] = [
            np.empty(0, np.uint32),
            np.empty(0, np.uint32),
            np.empty(0, np.float32),
        ]
        plant(wire.Header(wire.Kind.INPUT, run_id, 0, COORDINATOR, p), empty_input, sealed=True)
        nothing_alive: list[np.ndarray] = [
            np.empty(0, np.uint32),
            np.empty(0),
            np.zeros(depth),
            np.zeros(depth),
            np.zeros(depth, np.int64),
            np.zeros(depth, np.int64),
            np.zeros(10, np.int64),
            np.zeros(1),
            np.zeros(1, np.int64),
        ]
        result = wire.Header(wire.Kind.RESULT, run_id, 0, p, COORDINATOR)
        plant(result, nothing_alive, sealed=p % 2 == 0)
        plant(wire.Header(wire.Kind.ABORT, run_id, 0, COORDINATOR, p), [], sealed=True)
    return planted


def _token(endpoint: int) -> str:
    return "c" if endpoint == COORDINATOR else str(endpoint)


def _subject(h: wire.Header, layer: int | None = None) -> str:
    layer = h.layer if layer is None else layer
    return f"fsd.{h.run.hex()}.{_token(h.dst)}.{int(h.kind)}.{layer}.{_token(h.src)}.{h.chunk}"


def _object(h: wire.Header, layer: int | None = None) -> str:
    layer = h.layer if layer is None else layer
    return f"fsd/{h.run.hex()}/{layer}/{_token(h.dst)}/{int(h.kind)}.{h.src}.{h.chunk}"


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x40
    return bytes(out)


@pytest.fixture
def known_run_id(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The next run's id, learned in advance (as an attacker learns it from subject names)."""
    run_id = uuid.uuid4().bytes
    fake = types.SimpleNamespace(uuid4=lambda: uuid.UUID(bytes=run_id))
    monkeypatch.setattr(fsd.coordinator, "uuid", fake)
    return run_id


class _NatsAttacker:
    """Plants forgeries, then replays what it sees of the run, from its own thread."""

    def __init__(self, server: NatsServer, run_id: bytes, depth: int) -> None:
        self.server = server
        self.run_id = run_id
        self.planted = _forgeries(run_id, depth)
        self.live = 0
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        nc = await nats.connect(self.server.url, token=self.server.token)
        js = nc.jetstream()
        for header, frame in self.planted:
            await js.publish(_subject(header), frame)
            # the sender's own dedupe id scheme of old: claim it first
            await js.publish(_subject(header), frame, headers={"Nats-Msg-Id": _subject(header)})
        seen: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def watch(msg: Msg) -> None:
            if not msg.headers or "Forged" not in msg.headers:
                seen.put_nowait((msg.subject, msg.data))

        await nc.subscribe(f"fsd.{self.run_id.hex()}.>", cb=watch)
        self.ready.set()
        replayed = 0
        while not self.stop.is_set():
            try:
                subject, data = await asyncio.wait_for(seen.get(), 0.05)
            except TimeoutError:
                continue
            parts = subject.split(".")
            layer = int(parts[4])
            if parts[3] != str(int(wire.Kind.ACT)) or layer > 30 or replayed >= 40:
                continue
            replayed += 1
            later = ".".join([*parts[:4], str(layer + 2), *parts[5:]])
            forged = {"Forged": "1"}
            await js.publish(subject, _flip(data), headers=forged)  # damaged, same subject
            await js.publish(later, data[: len(data) // 2], headers=forged)  # truncated
            await js.publish(later, data, headers=forged)  # genuine, on another subject
            await js.publish(subject, data, headers=forged)  # a plain duplicate: no rejection
            self.live += 3
        await nc.close()


def _stream_ready(server: NatsServer, config: ChannelConfig) -> None:
    """The deployment's stream exists before anything is planted in it."""
    with open_channel(config, uuid.uuid4().bytes, 0):
        pass


def test_forged_frames_on_a_live_nats_run_change_nothing(
    nats_server: NatsServer, shared_net: Network, shared_images: Images, known_run_id: bytes
) -> None:
    config = ChannelConfig("nats", nats_server.url, options=NatsOptions(token=nats_server.token))
    _stream_ready(nats_server, dataclasses.replace(config, secret=auth.new_secret()))
    attacker = _NatsAttacker(nats_server, known_run_id, shared_net.depth)
    attacker.thread.start()
    assert attacker.ready.wait(30)
    try:
        cfg = RunConfig(
            workers=WORKERS, channel="nats", partition="min-comm", channel_config=config
        )
        result = run(shared_net, shared_images.matrix, cfg)
    finally:
        attacker.stop.set()
        attacker.thread.join(10)
    assert result.categories.tolist() == shared_images.truth[120].tolist()
    # every planted frame reached its receiver before the genuine ones; each was planted twice,
    # and the identical copy counts once
    planted = len(attacker.planted)
    assert planted <= result.frames_rejected <= planted + attacker.live
    assert result.to_json()["frames_rejected"] == result.frames_rejected


class _S3Attacker:
    """Plants forged objects for the run's keys, then replays what appears, ahead of the run."""

    def __init__(self, server: S3Server, run_id: bytes, depth: int) -> None:
        self.client = server.client()
        self.run_id = run_id
        self.planted = _forgeries(run_id, depth)
        self.live = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def plant(self) -> None:
        for header, frame in self.planted:
            self.client.put_object("fsd", _object(header), io.BytesIO(frame), len(frame))

    def _watch(self) -> None:
        prefix = f"fsd/{self.run_id.hex()}/"
        done: set[str] = set()
        while not self.stop.is_set() and self.live < 60:
            for obj in self.client.list_objects("fsd", prefix, recursive=True):
                name = obj.object_name or ""
                parts = name.split("/")
                if name in done or len(parts) != 5 or not parts[4].startswith("2."):
                    continue
                done.add(name)
                layer = int(parts[2])
                if layer > 40:
                    continue
                # far ahead of the run: a replay raced by the genuine write would overwrite it
                # (denial, which the stat below means to avoid, and a loaded machine allows)
                target = "/".join([*parts[:2], str(layer + 60), *parts[3:]])
                try:  # never overwrite a genuine object: that is denial, not forgery
                    self.client.stat_object("fsd", target)
                    continue
                except Exception:
                    pass
                resp = self.client.get_object("fsd", name)
                data = resp.read()
                resp.close()
                forged = _flip(data)
                self.client.put_object("fsd", target, io.BytesIO(forged), len(forged))
                self.live += 1
            time.sleep(0.005)


def test_forged_objects_on_a_live_s3_run_change_nothing(
    s3_server: S3Server, shared_net: Network, shared_images: Images, known_run_id: bytes
) -> None:
    attacker = _S3Attacker(s3_server, known_run_id, shared_net.depth)
    attacker.plant()
    attacker.thread.start()
    try:
        config = ChannelConfig(
            "s3",
            s3_server.endpoint,
            options=S3Options(access_key=s3_server.access_key, secret_key=s3_server.secret_key),
        )
        cfg = RunConfig(workers=WORKERS, channel="s3", partition="min-comm", channel_config=config)

        def halt_the_attacker(layer: int) -> None:
            """Past layer 100 (the last it forges into): done, every put landed before the
            purge, which must then leave nothing (a put racing the purge would be left)."""
            if layer > 100 and not attacker.stop.is_set():
                attacker.stop.set()
                attacker.thread.join(30)

        result = run(shared_net, shared_images.matrix, cfg, on_progress=halt_the_attacker)
    finally:
        attacker.stop.set()
        attacker.thread.join(10)
    assert result.categories.tolist() == shared_images.truth[120].tolist()
    # a forged object is counted when a receiver reads it before the genuine one replaces it
    assert 0 < result.frames_rejected <= len(attacker.planted) + attacker.live
    prefix = f"fsd/{known_run_id.hex()}/"
    left = list(s3_server.client().list_objects("fsd", prefix, recursive=True))
    assert left == []  # the run's clean-up removed the forgeries too
