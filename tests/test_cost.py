"""fsd.cost against hand-computed bills: each expected dollar figure is worked out by hand."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fsd.channels.base import units_64k
from fsd.cost import PRICES, Cost, Prices, Usage, estimate, lambda_gb_seconds
from fsd.errors import InputError

KIB = 1024


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-18)


# --- units_64k ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nbytes", "units"),
    [
        (0, 1),  # an empty message is still one request
        (1, 1),
        (64 * KIB - 1, 1),
        (64 * KIB, 1),  # exactly one chunk
        (64 * KIB + 1, 2),
        (100 * KIB, 2),  # the 100 KB message of the pricing pages
        (256 * KIB, 4),  # SQS's maximum message: four requests
        (256 * KIB + 1, 5),
    ],
)
def test_units_64k(nbytes: int, units: int) -> None:
    assert units_64k(nbytes) == units


def test_units_64k_rejects_negative_size() -> None:
    with pytest.raises(InputError):
        units_64k(-1)


# --- nats: SNS + SQS ---------------------------------------------------------------------------


def test_million_64k_publishes_cost_fifty_cents_of_sns() -> None:
    n = 1_000_000
    cost = estimate(Usage("nats", publishes=n, publish_units=n * units_64k(64 * KIB)))
    assert cost.requests["sns_publish"] == 1_000_000
    assert cost.breakdown["sns_publish"] == approx(0.50)
    # each publish is also one SQS enqueue: 1e6 x $0.40/1e6
    assert cost.requests["sqs"] == 1_000_000
    assert cost.breakdown["sqs"] == approx(0.40)


def test_100k_message_is_billed_as_two_publishes() -> None:
    cost = estimate(Usage("nats", publishes=1, publish_units=units_64k(100 * KIB)))
    assert cost.requests["sns_publish"] == 2
    assert cost.breakdown["sns_publish"] == approx(2 * 0.50 / 1e6)


def test_sns_data_is_priced_per_gib() -> None:
    cost = estimate(Usage("nats", publishes=1, publish_units=1, publish_bytes=2**30))
    assert cost.breakdown["sns_data"] == approx(0.09)
    half = estimate(Usage("nats", publish_bytes=2**29))
    assert half.breakdown["sns_data"] == approx(0.045)


def test_nats_hand_computed_run() -> None:
    # three messages of 100 KiB, 1 KiB and 0 B -> 2 + 1 + 1 = 4 units
    sizes = [100 * KIB, KIB, 0]
    usage = Usage(
        "nats",
        publishes=3,
        publish_units=sum(units_64k(s) for s in sizes),
        publish_bytes=sum(sizes),
        receives=5,
        receive_units=6,
        acks=3,
    )
    cost = estimate(usage)
    # SQS: 4 enqueues + 6 receive units + ceil(3/10) = 1 delete batch = 11 requests
    assert cost.requests == {"sns_publish": 4, "sqs": 11}
    assert cost.breakdown["sns_publish"] == approx(4 * 0.5e-6)  # 2.0e-6
    assert cost.breakdown["sqs"] == approx(11 * 0.4e-6)  # 4.4e-6
    assert cost.breakdown["sns_data"] == approx(103_424 / 2**30 * 0.09)
    assert set(cost.breakdown) == {"sns_publish", "sns_data", "sqs"}
    assert cost.total_usd == approx(2.0e-6 + 4.4e-6 + 103_424 / 2**30 * 0.09)


@pytest.mark.parametrize(("acks", "batches"), [(0, 0), (1, 1), (10, 1), (11, 2), (25, 3)])
def test_acks_are_billed_in_batches_of_ten(acks: int, batches: int) -> None:
    cost = estimate(Usage("nats", acks=acks))
    assert cost.requests["sqs"] == batches
    assert cost.breakdown["sqs"] == approx(batches * 0.4e-6)


def test_empty_receives_are_still_billed() -> None:
    # 7 polls that returned nothing (0 payload units counted) are 7 billed ReceiveMessage requests
    cost = estimate(Usage("nats", receives=7, receive_units=0))
    assert cost.requests["sqs"] == 7
    # a message counted without its units is still at least one publish
    assert estimate(Usage("nats", publishes=3)).requests["sns_publish"] == 3


def test_nats_ignores_s3_counts() -> None:
    cost = estimate(Usage("nats", puts=1000, gets=1000, lists=1000))
    assert cost.total_usd == 0.0
    assert not any(k.startswith("s3") for k in cost.breakdown)


# --- s3 ----------------------------------------------------------------------------------------


def test_thousand_puts_cost_half_a_cent() -> None:
    cost = estimate(Usage("s3", puts=1000))
    assert cost.breakdown["s3_put"] == approx(0.005)
    assert cost.total_usd == approx(0.005)


def test_gets_including_404s_are_billed() -> None:
    # 2000 GETs that found their object + 500 that found nothing yet: 2500 x $0.0004/1000
    cost = estimate(Usage("s3", gets=2000 + 500))
    assert cost.requests["s3_get"] == 2500
    assert cost.breakdown["s3_get"] == approx(0.001)


def test_list_is_billed_at_the_put_price() -> None:
    cost = estimate(Usage("s3", lists=1000))
    assert cost.breakdown["s3_list"] == approx(0.005)


def test_s3_hand_computed_run() -> None:
    cost = estimate(Usage("s3", puts=400, gets=3000, lists=200))
    # (400 + 200) x $0.005/1000 + 3000 x $0.0004/1000 = 0.003 + 0.0012
    assert cost.requests == {"s3_put": 400, "s3_list": 200, "s3_get": 3000}
    assert cost.total_usd == approx(0.0042)
    assert set(cost.breakdown) == {"s3_put", "s3_list", "s3_get"}


def test_s3_ignores_nats_counts() -> None:
    cost = estimate(Usage("s3", publishes=10, publish_units=10, publish_bytes=2**30, acks=10))
    assert cost.total_usd == 0.0
    assert not any(k.startswith(("sns", "sqs")) for k in cost.breakdown)


# --- local and Lambda --------------------------------------------------------------------------


def test_local_has_no_transport_cost() -> None:
    cost = estimate(Usage("local", publishes=10, publish_units=20, puts=5, gets=5, acks=10))
    assert cost.total_usd == 0.0
    assert cost.breakdown == {}
    assert cost.requests == {}


@pytest.mark.parametrize(
    ("seconds", "memory_mb", "gb_s"),
    [
        ([1.0, 0.5], 1024, 1.5),
        ([2.0], 512, 1.0),
        ([0.0101], 512, 0.011 * 0.5),  # 10.1 ms bills 11 ms
        ([0.0001], 1024, 0.001),  # anything above 0 bills at least 1 ms
        ([2.007], 1024, 2.007),  # 2.007 * 1000 is 2007.0000000000002 in floats: still 2007 ms
        ([0.3, 0.3, 0.3], 128, 0.9 * 0.125),
        ([], 1024, 0.0),
    ],
)
def test_lambda_gb_seconds(seconds: list[float], memory_mb: int, gb_s: float) -> None:
    assert lambda_gb_seconds(seconds, memory_mb) == approx(gb_s)


def test_lambda_gb_seconds_accepts_any_iterable() -> None:
    assert lambda_gb_seconds((s for s in [0.25, 0.25]), 2048) == approx(1.0)


@pytest.mark.parametrize(
    ("seconds", "memory_mb"),
    [([-0.1], 1024), ([math.nan], 1024), ([math.inf], 1024), ([1.0], 0), ([1.0], -128)],
)
def test_lambda_gb_seconds_rejects_bad_input(seconds: list[float], memory_mb: int) -> None:
    with pytest.raises(InputError):
        lambda_gb_seconds(seconds, memory_mb)


def test_lambda_prices() -> None:
    # AWS's own example: 3M invocations of 1 s at 512 MB = 1.5M GB-s (no free tier here)
    gb_s = lambda_gb_seconds([1.0] * 3, 512) * 1_000_000
    cost = estimate(Usage("local", invocations=3_000_000, gb_seconds=gb_s))
    assert cost.breakdown["lambda_compute"] == approx(1_500_000 * 0.0000166667)  # $25.00005
    assert cost.breakdown["lambda_requests"] == approx(0.60)
    assert cost.requests == {"lambda_requests": 3_000_000}
    assert cost.total_usd == approx(25.00005 + 0.60)


@pytest.mark.parametrize("channel", ["nats", "s3", "local"])
def test_lambda_applies_to_every_channel(channel: str) -> None:
    cost = estimate(Usage(channel, invocations=5, gb_seconds=2.0))
    assert cost.breakdown["lambda_requests"] == approx(5 * 0.2e-6)
    assert cost.breakdown["lambda_compute"] == approx(2 * 0.0000166667)
    assert cost.total_usd == approx(1e-6 + 3.33334e-5)


# --- zero usage, totals, prices ----------------------------------------------------------------


@pytest.mark.parametrize("channel", ["nats", "s3", "local"])
def test_zero_usage_costs_nothing(channel: str) -> None:
    cost = estimate(Usage(channel))
    assert cost.total_usd == 0.0
    assert all(v == 0.0 for v in cost.breakdown.values())
    assert "lambda_compute" not in cost.breakdown


@pytest.mark.parametrize(
    "usage",
    [
        Usage("nats", 9, 17, 900_000, 12, 20, 9, invocations=5, gb_seconds=3.25),
        Usage("s3", puts=123, gets=4567, lists=89, invocations=5, gb_seconds=3.25),
    ],
)
def test_breakdown_sums_to_total(usage: Usage) -> None:
    cost = estimate(usage)
    assert len(cost.breakdown) >= 5
    assert all(v > 0 for v in cost.breakdown.values())
    assert cost.total_usd == approx(math.fsum(cost.breakdown.values()))
    # and the total is the independently hand-computed bill, not just any sum
    lam = 3.25 * 0.0000166667 + 5 * 0.2e-6
    if usage.channel == "nats":
        # SNS 17 units, data 900000 B, SQS 17 + 20 + ceil(9/10) = 38
        expected = 17 * 0.5e-6 + 900_000 / 2**30 * 0.09 + 38 * 0.4e-6 + lam
    else:
        expected = (123 + 89) * 0.005e-3 + 4567 * 0.0004e-3 + lam
    assert cost.total_usd == approx(expected)


def test_custom_prices_are_used() -> None:
    prices = dataclasses.replace(PRICES, s3_put_per_thousand=1.0, s3_get_per_thousand=0.5)
    cost = estimate(Usage("s3", puts=2000, gets=2000), prices)
    assert cost.total_usd == approx(2.0 + 1.0)


def test_prices_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRICES.sqs_per_million = 0.0  # type: ignore[misc]
    assert isinstance(PRICES, Prices)


def test_to_json_rounds_to_nine_significant_digits_only_for_display() -> None:
    cost = estimate(Usage("nats", publish_bytes=1))
    raw = 0.09 / 2**30  # 8.381903171539307e-11
    assert cost.breakdown["sns_data"] == raw  # not rounded internally
    out = cost.to_json()
    assert set(out) == {"total_usd", "breakdown", "requests", "prices"}
    breakdown = out["breakdown"]
    assert isinstance(breakdown, dict)
    assert breakdown["sns_data"] == 8.38190317e-11
    assert out["total_usd"] == 8.38190317e-11
    assert out["requests"] == {"sns_publish": 0, "sqs": 0}
    assert out["prices"] == f"aws us-east-1 list prices, {PRICES.as_of}"
    assert json.loads(json.dumps(out)) == out


def test_cost_can_be_built_from_the_three_documented_fields() -> None:
    cost = Cost(0.5, {"sns_publish": 0.5}, {"sns_publish": 1_000_000})
    assert cost.to_json()["total_usd"] == 0.5


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_channel_is_an_input_error() -> None:
    with pytest.raises(InputError, match="kafka"):
        estimate(Usage("kafka"))


@pytest.mark.parametrize(
    "name",
    [f.name for f in dataclasses.fields(Usage) if f.name != "channel"],
)
def test_negative_counts_are_input_errors(name: str) -> None:
    bad = -0.5 if name == "gb_seconds" else -1
    with pytest.raises(InputError, match=name):
        estimate(Usage("nats", **{name: bad}))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_gb_seconds_is_an_input_error(value: float) -> None:
    with pytest.raises(InputError):
        estimate(Usage("local", gb_seconds=value))
