"""What a run would cost at AWS list prices, so channels can be compared in dollars, not just bytes.

fsd's channels have cloud counterparts: ``nats`` is priced as SNS + SQS (publish to a topic,
each message enqueued to a worker's queue, received, deleted), ``s3`` as S3 requests, and ``local``
(one machine) has no transport counterpart. Worker and coordinator functions are priced as Lambda
on every channel. Free tiers, volume discounts and data transfer inside the region are ignored:
the estimate is for one run at the marginal list price, which is what comparing channels needs.

Units: a "GB" is 2**30 bytes everywhere in this module (as Lambda's MB/1024 is), a "64 KB chunk" is
65536 bytes. Nothing is rounded internally; only :meth:`Cost.to_json` rounds for display.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from fsd.errors import InputError

GIB = 2**30  # a billed "GB" in this module
SQS_DELETE_BATCH = 10  # DeleteMessageBatch removes up to 10 messages per request
CHANNELS = ("nats", "s3", "sqs", "sns", "local")


@dataclass(frozen=True)
class Prices:
    """AWS list prices, us-east-1, in USD; the one place to update when AWS changes them."""

    # Amazon SNS standard topic: $0.50 per 1 million API requests (Publish), each 64 KB chunk = 1
    sns_publish_per_million: float = 0.50
    # Amazon SNS: $0.09 per GB of data published (GB = 2**30 bytes here)
    sns_data_per_gb: float = 0.09
    # Amazon SQS standard queue: $0.40 per 1 million requests (first 100 B/month tier), 64 KB chunks
    sqs_per_million: float = 0.40
    # Amazon S3 Standard: $0.005 per 1,000 PUT, COPY, POST, LIST requests
    s3_put_per_thousand: float = 0.005
    # Amazon S3 Standard: $0.0004 per 1,000 GET, SELECT and all other requests (DELETE is free)
    s3_get_per_thousand: float = 0.0004
    # AWS Lambda x86: $0.0000166667 per GB-second of duration (first 6 B GB-s/month tier)
    lambda_per_gb_second: float = 0.0000166667
    # AWS Lambda: $0.20 per 1 million requests (invocations)
    lambda_per_million_requests: float = 0.20
    # when these list prices were taken, shown with every estimate
    as_of: str = "2026-06"


PRICES = Prices()


@dataclass
class Usage:
    """What a run consumed, counted by the channel and the launcher; all counts are per run."""

    channel: str  # "nats" | "s3" | "local"
    publishes: int = 0  # messages published (nats)
    publish_units: int = 0  # sum over published messages of units_64k(size)
    publish_bytes: int = 0  # payload bytes published (SNS data)
    receives: int = 0  # receive/fetch requests (nats -> SQS ReceiveMessage), empty ones included
    receive_units: int = 0  # sum over receive requests of units_64k(payload received)
    acks: int = 0  # acknowledgements (SQS DeleteMessage, billed in batches of 10)
    puts: int = 0  # s3 PUT
    gets: int = 0  # s3 GET, including GETs that found nothing yet (404s are billed)
    lists: int = 0  # s3 LIST (billed at the PUT price)
    invocations: int = 0  # function invocations (workers + coordinator)
    gb_seconds: float = 0.0  # sum over functions of memory GB x billed seconds


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


def _check(usage: Usage) -> None:
    if usage.channel not in CHANNELS:
        raise InputError(
            f"unknown channel {usage.channel!r}: expected one of {', '.join(CHANNELS)}"
        )
    for f in fields(usage):
        value = getattr(usage, f.name)
        if f.name == "channel":
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"usage.{f.name} must be finite, got {value}")
        if value < 0:
            raise InputError(f"usage.{f.name} must be >= 0, got {value}")


def estimate(usage: Usage, prices: Prices = PRICES) -> Cost:
    """Price a run's usage as its channel's cloud counterpart plus Lambda.

    The breakdown lists every item of the channel's counterpart (even at $0, so it shows how the run
    was priced) and the two Lambda items when any function ran. Counts for another channel's
    transport (e.g. ``puts`` on ``nats``) are ignored. Each message and each receive request is at
    least one 64 KB unit, so billed units are never fewer than ``publishes`` / ``receives``.
    """
    _check(usage)
    breakdown: dict[str, float] = {}
    requests: dict[str, int] = {}
    if usage.channel in ("nats", "sns"):
        publish_units = max(usage.publishes, usage.publish_units)
        receive_units = max(usage.receives, usage.receive_units)
        # each SNS->SQS delivery is an SQS send of the same size; then receive and delete
        # nats counts each acked message, sns each DeleteMessageBatch (or hand-back) request
        deletes = usage.acks if usage.channel == "sns" else -(-usage.acks // SQS_DELETE_BATCH)
        sqs = publish_units + receive_units + deletes
        requests["sns_publish"] = publish_units
        requests["sqs"] = sqs
        breakdown["sns_publish"] = publish_units * prices.sns_publish_per_million / 1e6
        breakdown["sns_data"] = usage.publish_bytes / GIB * prices.sns_data_per_gb
        breakdown["sqs"] = sqs * prices.sqs_per_million / 1e6
    elif usage.channel == "sqs":
        # SendMessageBatch and ReceiveMessage per 64 KB unit, DeleteMessageBatch (``acks`` counts
        # requests here) and CreateQueue (``puts``) one each
        sqs = (
            max(usage.publishes, usage.publish_units)
            + max(usage.receives, usage.receive_units)
            + usage.acks
            + usage.puts
        )
        requests["sqs"] = sqs
        breakdown["sqs"] = sqs * prices.sqs_per_million / 1e6
    elif usage.channel == "s3":
        requests["s3_put"] = usage.puts
        requests["s3_list"] = usage.lists
        requests["s3_get"] = usage.gets
        breakdown["s3_put"] = usage.puts * prices.s3_put_per_thousand / 1e3
        breakdown["s3_list"] = usage.lists * prices.s3_put_per_thousand / 1e3
        breakdown["s3_get"] = usage.gets * prices.s3_get_per_thousand / 1e3
    if usage.invocations > 0 or usage.gb_seconds > 0:
        requests["lambda_requests"] = usage.invocations
        breakdown["lambda_compute"] = usage.gb_seconds * prices.lambda_per_gb_second
        breakdown["lambda_requests"] = usage.invocations * prices.lambda_per_million_requests / 1e6
    return Cost(math.fsum(breakdown.values()), breakdown, requests, prices)
