"""fsd.cost against hand-computed bills: each expected dollar figure is worked out by hand, with
each backend's own declared billing and prices (``BILLING``, ``PRICES``)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fsd import launch
from fsd.channels import CHANNELS, TRANSPORTS, transport
from fsd.channels.base import Channel, units_64k
from fsd.channels.local import LocalChannel
from fsd.cost import (
    AS_OF,
    Cost,
    Prices,
    billed_gb_seconds,
    declared_prices,
    estimate,
    function_billing,
)
from fsd.errors import InputError
from fsd.launch.base import FUNCTION_USE, Launcher

KIB = 1024


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-18)


def bill(kind: str, **ops: int) -> Cost:
    return estimate(transport(kind).BILLING, ops)


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


# --- every transport's billing names real prices and real operations ----------------------------


@pytest.mark.parametrize("kind", CHANNELS)
def test_billing_names_counted_operations_and_known_rates(kind: str) -> None:
    cls = transport(kind)
    assert set(cls.BILLING) <= set(cls.OPS), "billing for an operation the transport never counts"
    for items in cls.BILLING.values():
        assert all(item in declared_prices().rates for item, _ in items)


def _backends() -> list[type[Channel] | type[Launcher]]:
    return [transport(k) for k in TRANSPORTS] + [launch.platform(k) for k in launch.PLATFORMS]


def test_each_billed_item_is_priced_by_exactly_one_backend() -> None:
    """The prices live with the backends that bill them: one price per item, so there is one
    place to update each, and every item any backend bills has one."""
    owners: dict[str, list[str]] = {}
    for cls in _backends():
        for item in cls.PRICES:
            owners.setdefault(item, []).append(cls.__name__)
    assert all(len(who) == 1 for who in owners.values()), owners
    billed = {i for cls in _backends() for items in cls.BILLING.values() for i, _ in items}
    assert billed <= set(owners)
    assert set(declared_prices().rates) == set(owners)


class ToyBilledChannel(LocalChannel):
    """A transport outside fsd with a bill of its own: an operation, an item, its price."""

    OPS = ("put",)
    BILLING = {"put": (("toy_put", 2.0),)}
    PRICES = {"toy_put": 0.25}


def test_a_new_transport_brings_its_own_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    """One registry line: its item is priced at its own price, nothing in fsd.cost changes."""
    monkeypatch.setitem(TRANSPORTS, "toy", f"{__name__}:ToyBilledChannel")  # type: ignore[index]
    cost = estimate(transport("toy").BILLING, {"put": 3})
    assert cost.breakdown == {"toy_put": approx(3 * 2.0 * 0.25)}
    assert cost.requests == {"toy_put": 6}


def test_functions_are_billed_by_a_platform_for_what_they_use() -> None:
    billing = function_billing()
    assert billing and set(billing) <= set(FUNCTION_USE)
    assert any(launch.platform(k).BILLING is billing for k in launch.PLATFORMS)


def test_a_misspelt_rate_is_refused() -> None:
    with pytest.raises(InputError, match="sqs_requests"):
        estimate({"send_units": (("sqs_requests", 1.0),)}, {"send_units": 1})


# --- nats: priced as SNS + SQS -----------------------------------------------------------------


def test_million_64k_publishes_cost_fifty_cents_of_sns() -> None:
    n = 1_000_000
    cost = bill("nats", publish=n, publish_units=n * units_64k(64 * KIB))
    assert cost.requests["sns_publish"] == 1_000_000
    assert cost.breakdown["sns_publish"] == approx(0.50)
    # each publish is delivered to one queue: counted, and free (SNS pricing: deliveries to SQS)
    assert cost.requests["sns_delivery"] == 1_000_000
    assert cost.breakdown["sns_delivery"] == 0.0


def test_100k_message_is_billed_as_two_publishes() -> None:
    cost = bill("nats", publish=1, publish_units=units_64k(100 * KIB))
    assert cost.requests["sns_publish"] == 2
    assert cost.breakdown["sns_publish"] == approx(2 * 0.50 / 1e6)


def test_nats_hand_computed_run() -> None:
    # three messages of 100 KiB, 1 KiB and 0 B -> 2 + 1 + 1 = 4 units
    units = sum(units_64k(s) for s in [100 * KIB, KIB, 0])
    cost = bill("nats", publish=3, publish_units=units, receive=5, receive_units=6, ack=30)
    # SQS: 6 receive units + 30 acks / 10 per DeleteMessageBatch = 9 requests
    assert cost.requests == {"sns_publish": 4, "sns_delivery": 4, "sqs_request": 9}
    assert cost.breakdown["sns_publish"] == approx(4 * 0.5e-6)
    assert cost.breakdown["sqs_request"] == approx(9 * 0.4e-6)
    assert cost.total_usd == approx(2.0e-6 + 3.6e-6)


def test_operations_the_billing_does_not_name_are_free() -> None:
    cost = estimate(transport("nats").BILLING, {"put": 1000, "get": 1000})
    assert cost.total_usd == 0.0
    assert not any(k.startswith("s3") for k in cost.breakdown)


# --- sqs and sns -------------------------------------------------------------------------------


def test_sqs_hand_computed_run() -> None:
    # 3 SendMessageBatch of 100 KiB each (2 units), 8 receives carrying 7 units in all but
    # counted at least one each (8), 2 delete batches, 1 queue made and 1 deleted
    cost = bill(
        "sqs",
        send_batch=3,
        send_units=6,
        receive=8,
        receive_units=8,
        delete_batch=2,
        create_queue=1,
        delete_queue=1,
    )
    assert cost.requests == {"sqs_request": 6 + 8 + 2 + 1 + 1}
    assert cost.total_usd == approx(18 * 0.4e-6)


def test_sqs_batch_counts_are_not_billed_twice() -> None:
    # a SendMessageBatch is billed by its 64 KB units, not once more as a request
    assert bill("sqs", send_batch=5, send_units=5).requests == {"sqs_request": 5}


def test_sns_hand_computed_run() -> None:
    # 4 PublishBatch carrying 9 units, 10 receives (12 units), 3 delete or visibility batches,
    # 3 setup calls (topic, queue, subscription)
    cost = bill(
        "sns",
        publish_batch=4,
        publish_units=9,
        receive=10,
        receive_units=12,
        queue_batch=3,
        setup=3,
    )
    assert cost.requests == {"sns_publish": 9, "sns_delivery": 9, "sqs_request": 18}
    assert cost.total_usd == approx(9 * 0.5e-6 + 18 * 0.4e-6)


# --- s3 ----------------------------------------------------------------------------------------


def test_thousand_puts_cost_half_a_cent() -> None:
    cost = bill("s3", put=1000)
    assert cost.breakdown["s3_put"] == approx(0.005)
    assert cost.total_usd == approx(0.005)


def test_gets_including_404s_are_billed() -> None:
    # 2000 GETs that found their object + 500 that found nothing yet: 2500 x $0.0004/1000
    cost = bill("s3", get=2000, get_miss=500)
    assert cost.requests["s3_get"] == 2500
    assert cost.breakdown["s3_get"] == approx(0.001)


def test_list_is_billed_at_the_put_price_and_delete_is_free() -> None:
    cost = bill("s3", list=1000, delete=5000)
    assert cost.breakdown["s3_put"] == approx(0.005)
    assert cost.total_usd == approx(0.005)


def test_s3_hand_computed_run() -> None:
    cost = bill("s3", put=400, get=2800, get_miss=200, list=200)
    # (400 + 200) x $0.005/1000 + 3000 x $0.0004/1000 = 0.003 + 0.0012
    assert cost.requests == {"s3_put": 600, "s3_get": 3000}
    assert cost.total_usd == approx(0.0042)


# --- local and Lambda --------------------------------------------------------------------------


def test_local_has_no_transport_cost() -> None:
    cost = bill("local", publish=10, publish_units=20, put=5, get=5, ack=10)
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
    assert billed_gb_seconds(seconds, memory_mb) == approx(gb_s)


def test_lambda_gb_seconds_accepts_any_iterable() -> None:
    assert billed_gb_seconds((s for s in [0.25, 0.25]), 2048) == approx(1.0)


@pytest.mark.parametrize(
    ("seconds", "memory_mb"),
    [([-0.1], 1024), ([math.nan], 1024), ([math.inf], 1024), ([1.0], 0), ([1.0], -128)],
)
def test_lambda_gb_seconds_rejects_bad_input(seconds: list[float], memory_mb: int) -> None:
    with pytest.raises(InputError):
        billed_gb_seconds(seconds, memory_mb)


def test_lambda_prices() -> None:
    # AWS's own example: 3M invocations of 1 s at 512 MB = 1.5M GB-s (no free tier here)
    gb_s = billed_gb_seconds([1.0] * 3, 512) * 1_000_000
    cost = estimate({}, {}, invocations=3_000_000, gb_seconds=gb_s)
    assert cost.breakdown["lambda_gb_second"] == approx(1_500_000 * 0.0000166667)  # $25.00005
    assert cost.breakdown["lambda_request"] == approx(0.60)
    assert cost.requests == {"lambda_request": 3_000_000}
    assert cost.total_usd == approx(25.00005 + 0.60)


@pytest.mark.parametrize("channel", CHANNELS)
def test_lambda_applies_to_every_channel(channel: str) -> None:
    cost = estimate(transport(channel).BILLING, {}, invocations=5, gb_seconds=2.0)
    assert cost.breakdown["lambda_request"] == approx(5 * 0.2e-6)
    assert cost.breakdown["lambda_gb_second"] == approx(2 * 0.0000166667)
    assert cost.total_usd == approx(1e-6 + 3.33334e-5)


# --- zero usage, totals, prices ----------------------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
def test_zero_usage_costs_nothing(channel: str) -> None:
    cost = bill(channel)
    assert cost.total_usd == 0.0
    assert all(v == 0.0 for v in cost.breakdown.values())
    assert "lambda_gb_second" not in cost.breakdown


def test_breakdown_sums_to_total() -> None:
    ops = {"publish": 9, "publish_units": 17, "receive": 12, "receive_units": 20, "ack": 9}
    cost = estimate(transport("nats").BILLING, ops, invocations=5, gb_seconds=3.25)
    assert cost.total_usd == approx(math.fsum(cost.breakdown.values()))
    # and the total is the independently hand-computed bill, not just any sum
    lam = 3.25 * 0.0000166667 + 5 * 0.2e-6
    assert cost.total_usd == approx(17 * 0.5e-6 + (20 + 0.9) * 0.4e-6 + lam)


def test_custom_prices_are_used() -> None:
    prices = declared_prices().replace(s3_put=1.0 / 1e3, s3_get=0.5 / 1e3)
    cost = estimate(transport("s3").BILLING, {"put": 2000, "get": 2000}, prices=prices)
    assert cost.total_usd == approx(2.0 + 1.0)
    with pytest.raises(InputError, match="s3_puts"):
        declared_prices().replace(s3_puts=1.0)


@pytest.mark.parametrize("price", [math.nan, math.inf, -1.0, True])
def test_bad_prices_are_refused(price: float) -> None:
    with pytest.raises(InputError, match="s3_put"):
        declared_prices().replace(s3_put=price)


def test_prices_are_frozen() -> None:
    prices = declared_prices()
    with pytest.raises(dataclasses.FrozenInstanceError):
        prices.as_of = ""  # type: ignore[misc]
    with pytest.raises(TypeError):
        prices.rates["sqs_request"] = 0.0  # type: ignore[index]
    assert isinstance(prices, Prices)
    assert declared_prices().rate("sqs_request") == 0.40 / 1e6


def test_to_json_rounds_to_nine_significant_digits_only_for_display() -> None:
    cost = Cost(1 / 3, {"x": 1 / 3}, {"x": 1})
    out = cost.to_json()
    assert set(out) == {"total_usd", "breakdown", "requests", "prices"}
    assert out["breakdown"] == {"x": 0.333333333}
    assert out["total_usd"] == 0.333333333
    assert out["prices"] == f"aws us-east-1 list prices, {AS_OF}"
    assert json.loads(json.dumps(out)) == out


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, 0.5, True])
def test_bad_counts_are_input_errors(value: object) -> None:
    with pytest.raises(InputError, match="put"):
        estimate(transport("s3").BILLING, {"put": value})  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_bad_gb_seconds_is_an_input_error(value: float) -> None:
    with pytest.raises(InputError):
        estimate({}, {}, gb_seconds=value)


def test_negative_invocations_is_an_input_error() -> None:
    with pytest.raises(InputError):
        estimate({}, {}, invocations=-1)
