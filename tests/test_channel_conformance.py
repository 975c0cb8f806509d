"""The conformance suite every transport must pass unchanged (add a factory to CHANNEL_KINDS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from fsd import wire
from fsd.channels import COORDINATOR, ChannelConfig, open_channel
from fsd.coordinator import RunConfig, run
from fsd.errors import ChannelTimeout
from fsd.model import Images, Network

CHANNEL_KINDS = ["local", "nats", "s3"]


@pytest.fixture(params=CHANNEL_KINDS)
def config(request: pytest.FixtureRequest) -> Iterator[ChannelConfig]:
    """A small frame limit everywhere, so chunking is exercised on every transport."""
    kind = request.param
    if kind == "local":
        from fsd.channels.local import LocalMailbox

        with LocalMailbox() as box:
            yield ChannelConfig("local", box.address, max_frame=64 * 1024)
    elif kind == "nats":
        server = request.getfixturevalue("nats_server")
        yield ChannelConfig("nats", server.url, max_frame=64 * 1024, token=server.token)
    elif kind == "s3":
        server = request.getfixturevalue("s3_server")
        yield ChannelConfig(
            "s3",
            server.endpoint,
            max_frame=64 * 1024,
            access_key=server.access_key,
            secret_key=server.secret_key,
        )


def _act(run_id: bytes, layer: int, src: int, dst: int, n: int, seed: int = 0) -> wire.Message:
    rng = np.random.default_rng(seed)
    arrays = [
        np.arange(n, dtype=np.uint32),
        rng.integers(0, 1000, n).astype(np.uint32),
        rng.random(n).astype(np.float32),
    ]
    return wire.Message(wire.Header(wire.Kind.ACT, run_id, layer, src, dst), arrays)


def test_send_and_collect(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        sent = _act(run_id, 1, 0, 1, 100)
        assert a.send(sent) > 0
        got = b.expect(wire.Kind.ACT, 1, [0], timeout=5)
        assert got[0] == sent
        assert a.stats.messages == 1


def test_receiver_starting_after_everything_was_sent(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    sent = {}
    for src in range(3):
        with open_channel(config, run_id, src) as ch:
            sent[src] = _act(run_id, 7, src, 5, 10 + src, seed=src)
            ch.send(sent[src])
    with open_channel(config, run_id, 5) as late:
        got = late.expect(wire.Kind.ACT, 7, [0, 1, 2], timeout=5)
    assert got == sent


def test_duplicate_message_is_delivered_once(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        msg = _act(run_id, 2, 0, 1, 50)
        a.send(msg)
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 2, [0], timeout=5)[0] == msg
        assert b.collect(wire.Kind.ACT, 2, [0], timeout=0.3) == {}


def test_message_larger_than_transport_limit(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        big = _act(run_id, 3, 0, 1, 200_000)  # ~2.4 MB, far above max_frame
        a.send(big)
        assert a.stats.messages > 1  # it was chunked
        assert b.expect(wire.Kind.ACT, 3, [0], timeout=10)[0] == big


def test_empty_messages_for_layers_with_nothing_to_send(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        empty = _act(run_id, 4, 0, 1, 0)
        a.send(empty)
        got = b.expect(wire.Kind.ACT, 4, [0], timeout=5)[0]
        assert [len(x) for x in got.arrays] == [0, 0, 0]


def test_out_of_order_layers_are_kept(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        later, now = _act(run_id, 9, 0, 1, 5, seed=9), _act(run_id, 8, 0, 1, 5, seed=8)
        a.send(later)
        a.send(now)
        assert b.expect(wire.Kind.ACT, 8, [0], timeout=5)[0] == now
        assert b.expect(wire.Kind.ACT, 9, [0], timeout=5)[0] == later


def test_missing_sender_times_out_naming_it(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        a.send(_act(run_id, 1, 0, 1, 5))
        with pytest.raises(ChannelTimeout) as info:
            b.expect(wire.Kind.ACT, 1, [0, 2], timeout=0.5)
    assert info.value.missing == [2]


def test_three_runs_at_once_without_cross_talk(config: ChannelConfig) -> None:
    runs = [uuid.uuid4().bytes for _ in range(3)]
    senders = [open_channel(config, r, 0) for r in runs]
    receivers = [open_channel(config, r, COORDINATOR) for r in runs]
    try:
        msgs = []
        for i, (r, ch) in enumerate(zip(runs, senders, strict=True)):
            msgs.append(_act(r, 1, 0, COORDINATOR, 20, seed=i))
            ch.send(msgs[-1])
        for i, ch in enumerate(receivers):
            assert ch.expect(wire.Kind.ACT, 1, [0], timeout=5)[0] == msgs[i]
    finally:
        for ch in senders + receivers:
            ch.close()


@pytest.mark.parametrize("workers", [2, 4, 8])
def test_exact_truth_through_the_channel(
    config: ChannelConfig, shared_net: Network, shared_images: Images, workers: int
) -> None:
    cfg = RunConfig(
        workers=workers, partition="min-comm", channel=config.kind, channel_config=config
    )
    result = run(shared_net, shared_images.matrix, cfg)
    assert result.categories.tolist() == shared_images.truth[120].tolist()
