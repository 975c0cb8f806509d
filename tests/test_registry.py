"""The transport registry: one entry names a transport, and everything else follows from its
class (settings, embedded server, counted operations, billing), with nothing else to edit."""

from __future__ import annotations

import numpy as np
import pytest

from fsd import channels
from fsd.channels import CHANNELS, REMOTE_CHANNELS, TRANSPORTS, transport
from fsd.channels.base import Channel
from fsd.coordinator import RunConfig, _counted_ops, run
from fsd.errors import InputError, WorkerError
from fsd.functions.config import NotConfigured, own_channels
from fsd.model.generate import generate


def test_every_entry_is_a_channel_with_its_own_declarations() -> None:
    assert tuple(TRANSPORTS) == CHANNELS
    assert set(REMOTE_CHANNELS) == set(CHANNELS) - {"local"}
    for kind in CHANNELS:
        cls = transport(kind)
        assert issubclass(cls, Channel)
        assert cls.SERVER, f"{kind}: say what names its server"
        assert len(set(cls.OPS)) == len(cls.OPS)
        assert all(op.isascii() and "\n" not in op for op in cls.OPS)


def test_an_unknown_channel_is_an_input_error_naming_the_choices() -> None:
    with pytest.raises(InputError, match=r"kafka.*nats"):
        transport("kafka")


def test_a_new_transport_is_its_module_and_one_registry_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transport defined outside fsd runs an inference end to end: the coordinator starts its
    embedded server, the workers report its operation by name, the cost uses its billing."""
    monkeypatch.setitem(channels.TRANSPORTS, "toy", "toy_transport:ToyChannel")  # type: ignore[index]
    network, images = generate(256, 6, 20, seed=3)
    result = run(network, images.matrix, RunConfig(workers=3, channel="toy"))
    expected = run(network, images.matrix, RunConfig(workers=3, channel="local"))
    assert result.categories.tolist() == expected.categories.tolist()
    # every frame of every endpoint, the workers' too, but their RESULTs (which carry the counts)
    drops = result.messages - 3
    assert set(result.ops) == {"drop"} and result.ops["drop"] == drops
    assert result.cost is not None
    assert result.cost.requests["sqs_request"] == 2 * drops


@pytest.mark.parametrize(
    ("names", "counts", "why"),
    [
        (b"send\nreceive", [1], "do not pair"),
        (b"send\nsend", [1, 2], "do not pair"),
        (b"send\nforged", [1, 2], "unknown operation 'forged'"),
        (b"send\xff", [1], "not ASCII"),
        (b"send", [-1], "out of range"),
        (b"send", [1 << 60], "out of range"),
    ],
)
def test_a_workers_counts_are_checked_by_name(names: bytes, counts: list[int], why: str) -> None:
    known = {"send": 0, "receive": 0}
    with pytest.raises(WorkerError, match=why):
        _counted_ops(2, np.frombuffer(names, np.uint8), np.array(counts, np.int64), known)


def test_a_workers_counts_may_come_in_any_order() -> None:
    names = np.frombuffer(b"receive\nsend", np.uint8)
    got = _counted_ops(0, names, np.array([5, 7], np.int64), {"send": 0, "receive": 0})
    assert got == {"send": 7, "receive": 5}


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_functions_on_aws_need_no_endpoint_only_credentials(kind: str) -> None:
    """On Lambda, SQS and SNS are AWS's own endpoints (none configured) and the role's keys are
    in the environment; without either, the function says what to set."""
    store = {"FSD_S3_ENDPOINT": "https://s3.us-east-1.amazonaws.com", "FSD_CHANNEL": kind}
    role = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE", "AWS_SESSION_TOKEN": "t", **store}
    transport_config, _ = own_channels(kind, role)
    assert transport_config.address == ""  # boto3 resolves AWS's endpoint
    with pytest.raises(NotConfigured, match="AWS_ENDPOINT_URL"):
        own_channels(kind, store)


def test_functions_refuse_a_channel_of_one_machine() -> None:
    with pytest.raises(NotConfigured, match="FSD_CHANNEL"):
        own_channels("local", {"FSD_S3_ENDPOINT": "http://s3.test:9000"})
