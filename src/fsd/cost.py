"""What a run would cost at AWS list prices, so channels can be compared in dollars, not just bytes.

Each transport counts its own operations (``Channel.OPS``) and declares how its cloud
counterpart bills them (``Channel.BILLING``: operation -> billed items and how many of each);
this module holds the prices and adds it up, so a new transport brings its own billing and
nothing here changes unless it needs a new price. ``sqs``, ``sns`` and ``s3`` are priced as
themselves; ``nats`` as SNS + SQS (publish to a topic, deliver to a worker's queue, receive,
delete); ``local`` (one machine) has no transport counterpart. Worker and coordinator functions
are priced as Lambda on every channel. Free tiers, volume discounts and data transfer inside the
region are ignored: the estimate is for one run at the marginal list price, which is what
comparing channels needs.

Units: a "GB" is 2**30 bytes everywhere in this module (as Lambda's MB/1024 is), a "64 KB chunk" is
65536 bytes. Nothing is rounded internally; only :meth:`Cost.to_json` rounds for display.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from fsd.errors import InputError

GIB = 2**30  # a billed "GB" in this module


@dataclass(frozen=True)
class Prices:
    """AWS list prices, us-east-1, in USD per billed item; the one place to update when AWS
    changes them. Each field is a rate a transport's ``BILLING`` may name."""

    # Amazon SNS standard topic: $0.50 per 1 million requests, each 64 KB chunk of a publish = 1
    # (a PublishBatch: its total payload, per 64 KB)
    sns_publish: float = 0.50 / 1e6
    # Amazon SNS: deliveries to SQS queues are not charged, and filter policies on message
    # attributes are free (https://aws.amazon.com/sns/pricing/); counted so the bill shows them
    sns_delivery: float = 0.0
    # Amazon SQS standard queue: $0.40 per 1 million requests (first 100 B/month tier), every API
    # action, each 64 KB chunk of a payload = 1 (https://aws.amazon.com/sqs/pricing/)
    sqs_request: float = 0.40 / 1e6
    # Amazon S3 Standard: $0.005 per 1,000 PUT, COPY, POST, LIST requests
    s3_put: float = 0.005 / 1e3
    # Amazon S3 Standard: $0.0004 per 1,000 GET, SELECT and all other requests (DELETE is free)
    s3_get: float = 0.0004 / 1e3
    # AWS Lambda x86: $0.0000166667 per GB-second of duration (first 6 B GB-s/month tier)
    lambda_gb_second: float = 0.0000166667
    # AWS Lambda: $0.20 per 1 million requests (invocations)
    lambda_request: float = 0.20 / 1e6
    # when these list prices were taken, shown with every estimate
    as_of: str = "2026-06"

    def rate(self, item: str) -> float:
        """The price of one ``item``; :class:`InputError` for a name that is not a rate."""
        if item == "as_of" or item not in RATES:
            raise InputError(f"unknown billed item {item!r}: expected one of {', '.join(RATES)}")
        value: float = getattr(self, item)
        return value


PRICES = Prices()
RATES = tuple(f.name for f in fields(Prices) if f.name != "as_of")


@dataclass
class Cost:
    """An estimate: the total, what each billed item adds, and the request counts behind it."""

    total_usd: float
    breakdown: dict[str, float] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    prices: Prices = PRICES

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; dollars rounded to 9 significant digits so sub-cent items survive."""
        return {
            "total_usd": _sig9(self.total_usd),
            "breakdown": {k: _sig9(v) for k, v in self.breakdown.items()},
            "requests": dict(self.requests),
            "prices": f"aws us-east-1 list prices, {self.prices.as_of}",
        }


def _sig9(x: float) -> float:
    return float(f"{x:.9g}")


def lambda_gb_seconds(seconds_per_function: Iterable[float], memory_mb: int) -> float:
    """GB-seconds Lambda bills: each duration rounded up to 1 ms, memory MB/1024 GB."""
    if memory_mb <= 0:
        raise InputError(f"memory must be > 0 MB, got {memory_mb}")
    billed_ms = 0
    for s in seconds_per_function:
        if not math.isfinite(s) or s < 0:
            raise InputError(f"function duration must be a finite number >= 0 s, got {s}")
        # drop float noise first: 2.007 * 1000 == 2007.0000000000002 must bill 2007 ms, not 2008
        billed_ms += math.ceil(round(s * 1000, 6))
    return billed_ms / 1000 * (memory_mb / 1024)


Billing = Mapping[str, tuple[tuple[str, float], ...]]
"""Counted operation -> ``(billed item, how many per operation)`` (``Channel.BILLING``)."""


def estimate(
    billing: Billing,
    ops: Mapping[str, int],
    *,
    invocations: int = 0,
    gb_seconds: float = 0.0,
    prices: Prices = PRICES,
) -> Cost:
    """Price a run's counted operations with its transport's ``billing``, plus Lambda.

    The breakdown lists every item the billing names (even at $0, so it shows how the run was
    priced) and the two Lambda items when any function ran; ``requests`` says how many of each
    billed item the run used. Operations the billing does not name are free (an S3 DELETE).
    """
    for op, n in ops.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"operation {op!r}: the count must be a whole number >= 0, got {n}")
    if isinstance(invocations, bool) or not isinstance(invocations, int) or invocations < 0:
        raise InputError(f"invocations must be a whole number >= 0, got {invocations}")
    if not math.isfinite(gb_seconds) or gb_seconds < 0:
        raise InputError(f"gb_seconds must be a finite number >= 0, got {gb_seconds}")
    units: dict[str, float] = {}
    for op, items in billing.items():
        for item, weight in items:
            prices.rate(item)  # a misspelt item fails here, not silently at $0
            if not math.isfinite(weight) or weight < 0:
                raise InputError(f"{op}: a billed weight must be finite and >= 0, got {weight}")
            units[item] = units.get(item, 0.0) + weight * ops.get(op, 0)
    breakdown = {item: n * prices.rate(item) for item, n in units.items()}
    requests = {item: math.ceil(round(n, 6)) for item, n in units.items()}
    if invocations > 0 or gb_seconds > 0:
        requests["lambda_request"] = invocations
        breakdown["lambda_gb_second"] = gb_seconds * prices.lambda_gb_second
        breakdown["lambda_request"] = invocations * prices.lambda_request
    return Cost(math.fsum(breakdown.values()), breakdown, requests, prices)
