"""What FSD-Inference's own schemes would bill for the traffic of one fsd run.

FSD-Inference (Oakley & Ferhatosmanoglu, "FSD-Inference: Fully Serverless Distributed Inference
with Scalable Cloud Communication", ICDE 2024, arXiv 2403.15195) publishes its code and its cost
model in github.com/Joe-Oakley/FSD-Inference-ICDE-2024 (commit 060ed05):

* ``resources/FSD-Inference Experimental Results and Cost Model (ICDE 2024).xlsx``, sheets
  "Expt Plan Pub-Sub MQ" and "Expt Plan Object Storage", is the published model:
  ``C_Lambda = (W + 1) * C_inv + runtime_s * (RAM_MB / 128) * C_128MB_s``;
  ``C_SNS = P * C_pub + S * C_byte`` with ``P = ceil((S / Q) / 64000) * Q`` (Q PublishBatch calls,
  S bytes published, C_byte = $0.09 / 1e9); ``C_SQS = T * C_api`` (T ReceiveMessage polls; SQS to
  Lambda transfer $0); ``C_S3 = PUT * C_put + GET * C_get + LIST * C_list``. Its 1024-neuron,
  8-worker, 10,000-image runs cost $0.02153 (queue: 63.5 s mean worker time per batch) and
  $0.05391 (object: 58.2 s).
* ``src/sds-inf-queue/sds_inf_queue_worker.py`` is the queue scheme: each worker, each layer,
  writes one DynamoDB item per target it has nothing for (``db_write_norow_targets``,
  ``batch_writer``), sends the rest with SNS ``publish_batch`` (at most 10 entries and
  0.99 * 256 KiB per call; subscriptions deliver to per-worker SQS queues), and until all its
  sources are accounted for loops: DynamoDB ``query`` for flags, then ``receive_message``
  (10 messages, 1 s long poll), then ``delete_message_batch`` of what arrived
  (``process_messages``). The published model leaves out the DynamoDB reads and writes, the
  deletes and the 64 KB units of received payload; its README says the table "could now be removed"
  but was used in the experiments.
* ``src/sds-inf-object/sds_inf_object_worker.py`` is the object scheme: one PUT per target with
  data (``.dat``) and one empty PUT per target without (``.nul``, ``s3_write_norow_targets``); the
  receiver LISTs its prefix, sleeps ``S3_LIST_SLEEP_TIME = 0.1`` s after every LIST (the last one
  included), until every source has a file, then GETs the ``.dat`` files.

Prices are fsd's (:func:`fsd.cost.declared_prices`, us-east-1) so only the schemes differ, not
the price lists (the spreadsheet used $0.0053 / $0.00042 per 1,000 S3 PUT / GET, London's prices).
DynamoDB is not in fsd.cost; its on-demand prices are below. What this module assumes rather
than reads from the code or the price pages is marked ASSUMPTION.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fsd.cost import Prices, declared_prices
from fsd.errors import InputError

#: DynamoDB on-demand, us-east-1, Standard table class, after the 2024-11-01 price cut: $0.625 per
#: million write request units, $0.125 per million read request units. The unit rules (1 KB per
#: WRU, 4 KB per RRU, an eventually consistent read half an RRU) are on
#: https://aws.amazon.com/dynamodb/pricing/on-demand/ ; the dollar figures, rendered there by
#: script, were read from secondary sources quoting it (e.g.
#: https://airbyte.com/data-engineering-resources/dynamodb-pricing). Taken 2026-11-30.
SPREADSHEET_SNS_DATA_PER_GB = 0.09
"""The spreadsheet's SNS data charge ($0.09 per 1e9 bytes published): in its published model
only; AWS bills no data for SNS deliveries to SQS in the region (https://aws.amazon.com/sns/pricing/)."""
DYNAMODB_WRITE_PER_MILLION = 0.625
DYNAMODB_READ_PER_MILLION = 0.125
#: A Query of one small partition (FSD-Inference's flags are < 100 bytes) with boto3's default
#: eventually consistent read: half a read request unit, also when it finds nothing.
QUERY_READ_UNITS = 0.5
#: sds_inf_object_worker.py: S3_LIST_SLEEP_TIME
LIST_INTERVAL = 0.1
#: sds_inf_queue_worker.py: MAX_NUM_MESSAGES (entries per publish_batch and per receive_message)
BATCH_ENTRIES = 10
#: sds_inf_queue_worker.py: MAX_ALLOWED_BATCH_MESSAGE_SIZE, bytes per publish_batch
BATCH_BYTES = int(262144 * 0.99)
#: SNS and SQS bill every 64 KB of a request's payload as one request
CHUNK = 65536
#: messages per ReceiveMessage in FSD-Inference's 1024-neuron 8-worker run (the spreadsheet's
#: "Metric Reports Pub-Sub MQ": 6,774 messages received in 4,318 polls)
MEASURED_MESSAGES_PER_POLL = 6774 / 4318


@dataclass(frozen=True)
class Traffic:
    """One run's activation traffic, counted per (worker, layer) "slot" as FSD-Inference sees it.

    ``messages`` are the worker-to-worker activation messages that carry data, ``flags`` those a
    sender has nothing for (fsd sends them empty; FSD-Inference writes a DynamoDB item or an empty
    S3 object instead). ``bytes`` is their payload as fsd encodes it.
    """

    workers: int
    layers: int
    messages: int
    flags: int
    bytes: int
    sending_slots: int  # (worker, layer) pairs that send at least one data message
    receiving_slots: int  # (worker, layer) pairs that receive at least one data message
    expecting_slots: int  # (worker, layer) pairs with at least one source (data or flag)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an integer >= 0, got {value!r}")
        slots = self.workers * self.layers
        if max(self.sending_slots, self.receiving_slots, self.expecting_slots) > slots:
            raise InputError(f"more busy slots than workers x layers ({slots})")


@dataclass
class Bill:
    """A scheme's bill for one run: USD per item, billed request counts, and which items the
    published spreadsheet model counts (``published``)."""

    scheme: str
    items: dict[str, float] = field(default_factory=dict)
    requests: dict[str, float] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)

    @property
    def total_usd(self) -> float:
        return math.fsum(self.items.values())

    @property
    def published_usd(self) -> float:
        return math.fsum(self.published.values())

    def to_json(self) -> dict[str, object]:
        return {
            "scheme": self.scheme,
            "total_usd": float(f"{self.total_usd:.9g}"),
            "published_model_usd": float(f"{self.published_usd:.9g}"),
            "items": {k: float(f"{v:.9g}") for k, v in self.items.items()},
            "requests": dict(self.requests),
        }


def _lambda(invocations: int, gb_seconds: float, prices: Prices) -> dict[str, float]:
    return {
        "lambda_request": invocations * prices.rate("lambda_request"),
        "lambda_gb_second": gb_seconds * prices.rate("lambda_gb_second"),
    }


def queue_scheme(
    t: Traffic,
    invocations: int,
    gb_seconds: float,
    messages_per_poll: float = BATCH_ENTRIES,
    prices: Prices | None = None,
) -> Bill:
    """SNS + SQS with DynamoDB flags (FSD-Inf-Queue), for ``t``'s traffic at this run's Lambda use.

    ASSUMPTIONS (lower bounds by default, since per-message sizes and arrival times are not
    reported): every sending slot needs at least one PublishBatch and fits ``BATCH_ENTRIES`` /
    ``BATCH_BYTES`` per call; every receiving slot needs at least one ReceiveMessage, and a poll
    returns ``messages_per_poll`` messages (at most 10; FSD-Inference's own 8-worker run measured
    6,774 / 4,318 = 1.57); one DeleteMessageBatch per poll; each slot with sources makes one
    DynamoDB Query per poll plus a last one that finds its sources complete. Deliveries to the
    queues are billed as fsd.cost bills its sns channel's (the SQS send of each publish's 64 KB
    units, priced as ``sns_delivery``: AWS charges nothing to deliver to SQS), so both sides
    count them alike; nor is SNS data billed (attribute filter policies are free). The
    end-of-batch synchronisation (one publish and poll per worker) is left out, as fsd's own
    result messages are.
    """
    if not 1 <= messages_per_poll <= BATCH_ENTRIES:
        raise InputError(
            f"messages per poll must be in [1, {BATCH_ENTRIES}], got {messages_per_poll}"
        )
    batches = max(
        t.sending_slots, math.ceil(t.messages / BATCH_ENTRIES), math.ceil(t.bytes / BATCH_BYTES)
    )
    publish_units = max(batches, math.ceil(t.bytes / CHUNK))
    deliveries = publish_units
    polls = max(t.receiving_slots, math.ceil(t.messages / messages_per_poll))
    receive_units = max(polls, math.ceil(t.bytes / CHUNK))
    deletes = polls
    queries = polls + t.expecting_slots
    read_units = queries * QUERY_READ_UNITS
    sqs = receive_units + deletes
    prices = prices if prices is not None else declared_prices()
    bill = Bill("fsd-inference queue (SNS + SQS + DynamoDB flags)")
    bill.requests = {
        "sns_publish": publish_units,
        "sns_delivery": deliveries,
        "sqs_request": sqs,
        "dynamodb_write_units": t.flags,
        "dynamodb_read_units": read_units,
        "lambda_request": invocations,
    }
    bill.items = {
        "sns_publish": publish_units * prices.rate("sns_publish"),
        "sns_delivery": deliveries * prices.rate("sns_delivery"),
        "sqs_request": sqs * prices.rate("sqs_request"),
        "dynamodb_write": t.flags * DYNAMODB_WRITE_PER_MILLION / 1e6,
        "dynamodb_read": read_units * DYNAMODB_READ_PER_MILLION / 1e6,
        **_lambda(invocations, gb_seconds, prices),
    }
    # the spreadsheet: P = ceil((S / Q) / 64000) * Q publishes, S * $0.09 / 1e9, T polls, Lambda
    per_batch = math.ceil(t.bytes / batches / 64000) if batches else 0
    bill.published = {
        "sns_publish": per_batch * batches * prices.rate("sns_publish"),
        "sns_data": t.bytes * SPREADSHEET_SNS_DATA_PER_GB / 1e9,
        "sqs_request": polls * prices.rate("sqs_request"),
        **_lambda(invocations, gb_seconds, prices),
    }
    return bill


def list_polls(waits: Iterable[float], interval: float = LIST_INTERVAL) -> tuple[int, float]:
    """LIST requests and seconds spent in FSD-Inf-Object's receive loops, one wait per slot.

    A receiver that waits ``w`` seconds for its last source LISTs at 0, interval, 2 interval, ...
    and sleeps ``interval`` after each LIST, the one that finds everything included: ``1 +
    ceil(w / interval)`` LISTs and that many intervals (LIST latency ignored).
    """
    if not math.isfinite(interval) or interval <= 0:
        raise InputError(f"poll interval must be > 0 s, got {interval}")
    lists, seconds = 0, 0.0
    for wait in waits:
        if not math.isfinite(wait) or wait < 0:
            raise InputError(f"a wait must be a finite number >= 0 s, got {wait}")
        polls = 1 + math.ceil(round(wait / interval, 9))
        lists += polls
        seconds += polls * interval
    return lists, seconds


def object_scheme(
    t: Traffic,
    waits: Iterable[float],
    invocations: int,
    gb_seconds: float,
    memory_mb: int,
    interval: float = LIST_INTERVAL,
    prices: Prices | None = None,
) -> Bill:
    """S3 with LIST polling (FSD-Inf-Object), for ``t``'s traffic at this run's Lambda use.

    ``waits`` holds, for each of the ``t.expecting_slots`` slots, how long that worker waited for
    its sources. ASSUMPTION: it waits as long as the fsd run's worker did (its communication time
    in that layer); the object scheme then adds its poll sleeps on top of the run's Lambda time
    (``lambda_poll_sleep``: the intervals slept beyond the wait). The end-of-batch
    synchronisation (one PUT, LIST polls, W GETs by worker 0) is left out.
    """
    waits = list(waits)
    if len(waits) != t.expecting_slots:
        raise InputError(f"{len(waits)} waits for {t.expecting_slots} expecting slots")
    lists, slept = list_polls(waits, interval)
    extra_seconds = max(0.0, slept - math.fsum(waits))
    puts, gets = t.messages + t.flags, t.messages
    prices = prices if prices is not None else declared_prices()
    bill = Bill(f"fsd-inference object (S3, LIST every {interval:g} s)")
    bill.requests = {
        "s3_put": puts,
        "s3_list": lists,
        "s3_get": gets,
        "lambda_request": invocations,
    }
    bill.items = {
        "s3_put": puts * prices.rate("s3_put"),
        "s3_list": lists * prices.rate("s3_put"),
        "s3_get": gets * prices.rate("s3_get"),
        **_lambda(invocations, gb_seconds, prices),
        "lambda_poll_sleep": extra_seconds * memory_mb / 1024 * prices.rate("lambda_gb_second"),
    }
    bill.published = dict(bill.items)  # the spreadsheet counts all of these (runtime as measured)
    return bill
