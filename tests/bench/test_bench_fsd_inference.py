"""The benchmark's model of FSD-Inference's bills (benchmarks/fsd_inference.py) and the traffic
split it is fed (benchmarks/run.py), on small counts priced by hand."""

from __future__ import annotations

import numpy as np
import pytest

import fsd_inference
import run
from fsd.errors import InputError
from fsd.partition import LayerTransfers, Plan

# 2 workers, 3 layers: 4 data messages, 2 flags, 100,000 bytes; 5 (worker, layer) slots expect
# something, 4 send and 4 receive data
TRAFFIC = fsd_inference.Traffic(
    workers=2,
    layers=3,
    messages=4,
    flags=2,
    bytes=100_000,
    sending_slots=4,
    receiving_slots=4,
    expecting_slots=5,
)
LAMBDA = 3 * 0.20 / 1e6 + 10.0 * 0.0000166667  # 3 invocations, 10 GB-s


def test_queue_scheme_bills_dynamodb_flags_and_polls() -> None:
    bill = fsd_inference.queue_scheme(TRAFFIC, invocations=3, gb_seconds=10.0)
    # by hand: 4 PublishBatch calls of < 64 KB each; 4 deliveries (free) + 4 receives + 4
    # deletes; 2 flag items = 2 WRU; 4 polls + 5 final queries = 9 queries of half an RRU
    expected = {
        "sns_publish": 4 * 0.50 / 1e6,
        "sns_delivery": 0.0,
        "sqs_request": 8 * 0.40 / 1e6,
        "dynamodb_write": 2 * 0.625 / 1e6,
        "dynamodb_read": 4.5 * 0.125 / 1e6,
        "lambda_request": 3 * 0.20 / 1e6,
        "lambda_gb_second": 10.0 * 0.0000166667,
    }
    assert bill.items == pytest.approx(expected, rel=1e-12)
    assert bill.total_usd == pytest.approx(sum(expected.values()), rel=1e-12)
    # the published spreadsheet counts publishes (ceil(25,000 B / 64,000) = 1 per call), bytes at
    # $0.09 per 1e9, polls and Lambda: not DynamoDB, deliveries or deletes
    published = 4 * 0.50 / 1e6 + 100_000 * 0.09 / 1e9 + 4 * 0.40 / 1e6 + LAMBDA
    assert bill.published_usd == pytest.approx(published, rel=1e-12)
    # the flags are what it omits (and it bills SNS data, which AWS does not for SQS deliveries)
    assert "dynamodb_write" not in bill.published and "sns_data" not in bill.items


def test_queue_scheme_flags_cost_writes() -> None:
    """Every flag is a billed DynamoDB write: more flags, a bigger bill by exactly that much."""
    more = fsd_inference.Traffic(**{**vars(TRAFFIC), "flags": 102})
    low = fsd_inference.queue_scheme(TRAFFIC, invocations=3, gb_seconds=10.0)
    high = fsd_inference.queue_scheme(more, invocations=3, gb_seconds=10.0)
    assert high.total_usd - low.total_usd == pytest.approx(100 * 0.625 / 1e6, rel=1e-9)
    assert high.requests["dynamodb_write_units"] == 102


def test_queue_scheme_polls_per_message() -> None:
    """Fewer messages per poll (FSD-Inference measured 1.57) mean more polls, deletes, Queries."""
    busy = fsd_inference.Traffic(**{**vars(TRAFFIC), "messages": 30})
    full = fsd_inference.queue_scheme(busy, invocations=3, gb_seconds=10.0)  # 10 per poll: 4 polls
    slow = fsd_inference.queue_scheme(busy, invocations=3, gb_seconds=10.0, messages_per_poll=1.5)
    # 20 polls instead of 4: 16 more receives and 16 more deletes, 16 more half-RRU Queries
    assert slow.requests["sqs_request"] - full.requests["sqs_request"] == 32
    assert slow.requests["dynamodb_read_units"] - full.requests["dynamodb_read_units"] == 8
    with pytest.raises(InputError):
        fsd_inference.queue_scheme(busy, 3, 10.0, messages_per_poll=11)


def test_list_polls_sleep_after_every_list() -> None:
    # waits 0, 0.05, 0.1, 0.25 s at 0.1 s: 1, 2, 2 and 4 LISTs, each followed by a 0.1 s sleep
    lists, slept = fsd_inference.list_polls([0.0, 0.05, 0.1, 0.25])
    assert lists == 9
    assert slept == pytest.approx(0.9)
    with pytest.raises(InputError):
        fsd_inference.list_polls([0.1], interval=0.0)
    with pytest.raises(InputError):
        fsd_inference.list_polls([float("nan")])


def test_object_scheme_by_hand() -> None:
    waits = [0.0, 0.05, 0.1, 0.25, 0.0]  # one per expecting slot: 10 LISTs, 1.0 s asleep
    bill = fsd_inference.object_scheme(
        TRAFFIC, waits, invocations=3, gb_seconds=10.0, memory_mb=1024
    )
    expected = {
        "s3_put": 6 * 0.005 / 1e3,  # 4 .dat + 2 empty .nul objects
        "s3_list": 10 * 0.005 / 1e3,
        "s3_get": 4 * 0.0004 / 1e3,
        "lambda_request": 3 * 0.20 / 1e6,
        "lambda_gb_second": 10.0 * 0.0000166667,
        "lambda_poll_sleep": (1.0 - 0.4) * 1.0 * 0.0000166667,  # slept beyond the waits, 1 GB
    }
    assert bill.items == pytest.approx(expected, rel=1e-9)
    assert bill.published_usd == pytest.approx(bill.total_usd)
    with pytest.raises(InputError):
        fsd_inference.object_scheme(TRAFFIC, [0.0], 3, 10.0, 1024)  # one wait per slot


def test_traffic_rejects_impossible_counts() -> None:
    with pytest.raises(InputError):
        fsd_inference.Traffic(
            2, 3, 4, 2, 100, sending_slots=7, receiving_slots=0, expecting_slots=1
        )
    with pytest.raises(InputError):
        fsd_inference.Traffic(2, 3, -1, 2, 100, 0, 0, 0)


def test_traffic_splits_empty_messages_into_flags() -> None:
    """A planned message whose neurons are all inactive in that layer is a flag, not data."""
    layers = [
        LayerTransfers({(0, 1): np.array([0, 1]), (1, 0): np.array([2])}, cut_edges=3),
        LayerTransfers({(0, 1): np.array([1]), (1, 0): np.array([3])}, cut_edges=2),
    ]
    owners = [np.array([0, 0, 1, 1], np.int32)] * 3
    plan = Plan("contiguous", workers=2, neurons=4, owners=owners, layers=layers)
    active = [np.array([True, False, False, True]), np.array([False, False, False, True])]
    comm = np.array([[0.01, 0.02], [0.03, 0.04]])  # seconds per worker and layer
    counts, waits = run.traffic(plan, active, 500, comm)
    # layer 0: 0->1 carries neuron 0 (active), 1->0 only neuron 2 (inactive): a flag;
    # layer 1: 0->1 neuron 1 inactive: a flag, 1->0 neuron 3 active
    assert (counts.messages, counts.flags) == (2, 2)
    assert (counts.sending_slots, counts.receiving_slots, counts.expecting_slots) == (2, 2, 4)
    assert waits == [0.01, 0.02, 0.03, 0.04]  # (receiver, layer) in order
