"""The conformance suite every transport must pass unchanged: every entry of the registry
(:data:`fsd.channels.TRANSPORTS`) runs it, on the server its own ``embedded`` starts."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from fsd import auth, reference, wire
from fsd.channels import CHANNELS, COORDINATOR, ChannelConfig, embedded, open_channel
from fsd.channels.base import Slot
from fsd.coordinator import RunConfig, run
from fsd.errors import ChannelError, ChannelTimeout
from fsd.model import Images, Network
from fsd.model.generate import generate

KEY = auth.new_secret()  # the deployment secret every endpoint of these tests shares


@pytest.fixture(scope="module", params=CHANNELS)
def config(request: pytest.FixtureRequest) -> Iterator[ChannelConfig]:
    """Every transport in the registry, on the embedded server it starts itself (one per
    transport for this module), with a small frame limit so chunking is exercised everywhere."""
    base = ChannelConfig(request.param, max_frame=64 * 1024, secret=KEY)
    with embedded(base) as started:
        yield started


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


# 4 workers: tests/channels/test_transports.py runs fsd run with 4
@pytest.mark.parametrize("workers", [2, 8])
def test_exact_truth_through_the_channel(
    config: ChannelConfig, shared_net: Network, shared_images: Images, workers: int
) -> None:
    """2 workers: all 120 layers against the challenge's truth. 8 workers (7 peers a layer,
    not 1; nothing in a transport depends on the layer's number): the first 30 layers against
    the reference, a quarter of the minute a run over sqs or sns takes."""
    net = shared_net if workers == 2 else shared_net.truncated(30)
    cfg = RunConfig(
        workers=workers, partition="min-comm", channel=config.kind, channel_config=config
    )
    result = run(net, shared_images.matrix, cfg)
    if workers == 2:
        assert result.categories.tolist() == shared_images.truth[120].tolist()
    else:
        expected = reference.categories(reference.infer(net, shared_images.matrix))
        assert result.categories.tolist() == expected.tolist()


def test_exact_truth_with_replicas(config: ChannelConfig) -> None:
    """Two replicas of two partitions each: two runs on the transport at once, images split.
    A small net (20 layers): on sns, concurrent runs share the deployment's slot queues and
    hand each other's frames back, which makes every layer slow (docs/channels.md)."""
    network, images = generate(1024, 20, 200, seed=7)
    expected = reference.categories(reference.infer(network, images.matrix))
    cfg = RunConfig(
        workers=4, partitions=2, partition="min-comm", channel=config.kind, channel_config=config
    )
    result = run(network, images.matrix, cfg)
    assert result.categories.tolist() == expected.tolist()
    assert result.parallelism["replicas"] == 2 and result.activation_bytes > 0


def _sealed(frame: bytes, run_id: bytes, secret: bytes = KEY) -> bytes:
    return wire.seal(frame, auth.frame_key(secret, run_id))


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


# Each attack: what someone who can write to the transport, but lacks the deployment secret, puts
# in the slot of (ACT, layer 5, from 0 to 1) before the genuine frame is there.
ATTACKS: dict[str, Callable[[wire.Message, bytes], bytes]] = {
    "well-formed, sealed with another key": lambda m, r: _sealed(
        wire.encode(m), r, auth.new_secret()
    ),
    "well-formed, not sealed": lambda m, r: wire.encode(m),
    "genuine with a flipped body byte": lambda m, r: _flip(_sealed(wire.encode(m), r), 60),
    "genuine with a flipped tag byte": lambda m, r: _flip(_sealed(wire.encode(m), r), -1),
    "genuine, truncated": lambda m, r: _sealed(wire.encode(m), r)[:-40],
    "genuine of another layer, replayed here": lambda m, r: _sealed(
        wire.encode(_act(r, 6, 0, 1, 10)), r
    ),
    "genuine of another sender, replayed here": lambda m, r: _sealed(
        wire.encode(_act(r, 5, 2, 1, 10)), r
    ),
    "genuine of another run, replayed here": lambda m, r: _sealed(
        wire.encode(_act(b"x" * 16, 5, 0, 1, 10)), b"x" * 16
    ),
    "garbage": lambda m, r: bytes(range(256)) * 4,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_forged_frame_is_rejected_and_the_genuine_one_still_wins(
    config: ChannelConfig, attack: str
) -> None:
    run_id = uuid.uuid4().bytes
    genuine = _act(run_id, 5, 0, 1, 50)
    forged = ATTACKS[attack](genuine, run_id)
    slot = Slot(int(wire.Kind.ACT), 5, 0, 1, 0)
    mallory_config = dataclasses.replace(config, secret=auth.new_secret())
    with (
        open_channel(mallory_config, run_id, 7) as mallory,
        open_channel(config, run_id, 0) as a,
        open_channel(config, run_id, 1) as b,
    ):
        mallory._transmit([(slot, forged)])  # straight onto the transport, as an attacker would
        mallory.flush()
        deadline = time.monotonic() + 10
        while b.stats.rejected == 0 and time.monotonic() < deadline:  # until b was shown it
            assert b.collect(wire.Kind.ACT, 5, [0], timeout=0.05) == {}
        assert b.stats.rejected == 1
        a.send(genuine)
        assert b.expect(wire.Kind.ACT, 5, [0], timeout=5)[0] == genuine
        assert b.stats.rejected == 1  # counted once, however often the transport showed it


def test_a_duplicate_of_a_genuine_frame_is_no_rejection(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        msg = _act(run_id, 3, 0, 1, 20)
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 3, [0], timeout=5)[0] == msg
        a.send(msg)  # a retry, or a replay on the same slot: harmless
        assert b.collect(wire.Kind.ACT, 3, [0], timeout=0.3) == {}
        assert b.stats.rejected == 0


def test_a_channel_without_a_secret_refuses_to_open(config: ChannelConfig) -> None:
    with pytest.raises(ChannelError, match="secret"):
        open_channel(dataclasses.replace(config, secret=b""), uuid.uuid4().bytes, 0)
