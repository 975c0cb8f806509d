"""The ``sqs`` transport: Amazon SQS standard queues (boto3), one queue per endpoint of a run.

Queues are created **per run**, not once per deployment: ``<prefix>-<run>-c`` for the
coordinator and ``<prefix>-<run>-w<i>`` for worker ``i`` (``prefix`` is the deployment's
``namespace``). SQS cannot filter what a receiver gets, so two runs sharing a deployment's queues
would receive, and have to hand back, each other's frames (extra billed receives and latency for
every concurrent run); and a shared queue cannot be cleared of one run's leftovers (``PurgeQueue``
empties the whole queue, at most once a minute, and misses in-flight messages), while deleting a
run's own queues removes everything it left, in-flight messages included. The price is two extra
requests per endpoint and run (``CreateQueue``, ``DeleteQueue``) and AWS's "wait one second
before using a new queue", which overlaps the workers' start; the IAM policy can still be
scoped to ``arn:aws:sqs:<region>:<account>:<prefix>-*``. The coordinator's queue is tagged with
the run's owner and expiry, and a new coordinator deletes the queues of runs that ended without
deleting theirs (a SIGKILLed ``fsd run``: :func:`fsd.channels.aws.reap_runs`).

Whoever comes first creates a queue (``CreateQueue`` with the same attributes is idempotent): an
endpoint creates its own when it opens, a sender creates its target's when a send finds it
missing, so frames sent before their receiver started are kept. Sends go straight to the target
queue with ``SendMessageBatch`` (up to 10 frames and 1 MiB per request, each frame at most 1 MiB
with its attributes). A frame travels as a Binary message attribute, the body names its slot
(``kind.layer.src.dst.chunk``, checked against the frame's own header by the base): SQS counts a
Binary attribute's raw bytes toward the 1 MiB limit and the 64 KB billing units, while a base64
body counts 4/3 of them. Measured against moto (counted bytes, billed units, HTTP request body):
a 4,300-byte frame is 4,318 B / 1 unit / 5,955 B as an attribute against 5,748 B / 1 / 5,885 B
as base64; 65,000 bytes are 1 unit against 2; 700,000 bytes 11 against 15 (the HTTP bodies are
within 70 bytes of each other: boto3's JSON protocol base64-encodes the attribute on the wire).
Receivers long-poll their own queue (``WaitTimeSeconds`` up to 20) and delete what they
received, the rejected frames too, ten at a time (or before their next send, or on close).
Standard queues deliver at least once and in any order: the base's dedupe and reassembly absorb
it. The coordinator deletes the run's queues at the end (:meth:`purge_run`); a queue a lost run
leaves behind holds nothing older than ``ttl_seconds`` (its ``MessageRetentionPeriod``).

Counted operations (:attr:`SqsChannel.OPS`): ``send_batch`` = SendMessageBatch requests,
``send_units`` = their 64 KB units (how SQS bills them), ``receive`` = ReceiveMessage requests
(empty ones too), ``receive_units``, ``delete_batch`` = DeleteMessageBatch requests,
``create_queue``, ``delete_queue`` and ``reap`` (ListQueues, ListQueueTags, GetQueueAttributes
and DeleteQueue requests of reaping). Every SQS API action is a billed request, a payload per
64 KB chunk (https://aws.amazon.com/sqs/pricing/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions

from fsd.channels.aws import (
    MAX_BATCH,
    MISSING_QUEUE,
    AwsChannel,
    AwsOptions,
    aws_client,
    delete_messages,
    error_code,
    long_polls,
    parse_slot,
    reap_runs,
    retry,
    run_tags,
    slot_text,
)
from fsd.channels.base import COORDINATOR, ChannelConfig, Slot, options, units_64k
from fsd.errors import ChannelError

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_MESSAGE = 1024 * 1024  # SQS: a message (body + attributes) and a whole batch
ATTRIBUTE = "f"  # the Binary message attribute that carries the frame
_OVERHEAD = 256  # body (the slot's name) + attribute name and type, with room to spare
_VISIBILITY = 30  # a receiver that dies between receive and delete: others see it again then


def queue_name(prefix: str, run: bytes, endpoint: int) -> str:
    """The queue of ``endpoint`` in ``run`` (letters, digits, '-', '_'; at most 80 characters)."""
    who = "c" if endpoint == COORDINATOR else f"w{endpoint}"
    return f"{prefix}-{run.hex()}-{who}"


def _frame(message: Any) -> Any:
    """The frame a received message carries (its Binary attribute), or ``b""``."""
    return message.get("MessageAttributes", {}).get(ATTRIBUTE, {}).get("BinaryValue", b"")


class SqsChannel(AwsChannel):
    """One endpoint of one run on its own SQS queue."""

    OPS = (
        "send_batch",
        "send_units",
        "receive",
        "receive_units",
        "delete_batch",
        "create_queue",
        "delete_queue",
        "reap",
    )
    BILLING = {
        "send_units": (("sqs_request", 1.0),),
        "receive_units": (("sqs_request", 1.0),),
        "delete_batch": (("sqs_request", 1.0),),
        "create_queue": (("sqs_request", 1.0),),
        "delete_queue": (("sqs_request", 1.0),),
        "reap": (("sqs_request", 1.0),),
    }
    # us-east-1 list price (https://aws.amazon.com/sqs/pricing/): a standard queue's requests,
    # $0.40 per million (first 100 B/month tier), every API action, each 64 KB chunk of a
    # payload = 1
    PRICES = {"sqs_request": 0.40 / 1e6}
    SERVER = "AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL or AWS credentials"

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        self._sqs: SQSClient = aws_client(config, "sqs")
        self._where = config.address or f"sqs.{options(config, AwsOptions).region}.amazonaws.com"
        self._prefix = config.namespace
        self._urls: dict[int, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"fsd-sqs-{me}")
        self._deletes: list[Future[None]] = []
        self._consumed: list[str] = []  # receipt handles not yet deleted
        self.frame_limit = min(config.max_frame, MAX_MESSAGE - _OVERHEAD)
        self._url = self._retry(lambda: self._create(me), "create its queue")
        self._urls[me] = self._url
        if me == COORDINATOR and config.reap:  # before this run's workers: dead runs' goes
            reap_runs(
                self._sqs,
                self._where,
                self._prefix,
                "c",
                run,
                config.ttl_seconds,
                lambda: self.stats.count("reap"),
            )

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, op: Callable[[], T], what: str) -> T:
        return retry(op, f"sqs at {self._where}", what, self.config.retry_seconds)

    def _create(self, endpoint: int) -> str:
        """Create (or find: same attributes, same answer) the queue of ``endpoint``; its URL."""
        retention = int(min(max(self.config.ttl_seconds, 60), 14 * 86400))
        self.stats.count("create_queue")
        # the coordinator's own queue says who owns the run and until when (reap_runs)
        mine = endpoint == COORDINATOR == self.me
        return self._sqs.create_queue(
            QueueName=queue_name(self._prefix, self.run, endpoint),
            Attributes={
                "MaximumMessageSize": str(MAX_MESSAGE),
                "MessageRetentionPeriod": str(retention),
                "VisibilityTimeout": str(_VISIBILITY),
            },
            **({"tags": run_tags(self.config.ttl_seconds)} if mine else {}),
        )["QueueUrl"]

    def _url_of(self, endpoint: int) -> str:
        """A queue's URL without a request: the account's queues share all but the name."""
        url = self._urls.get(endpoint)
        if url is None:
            base = self._url.rsplit("/", 1)[0]
            url = self._urls[endpoint] = f"{base}/{queue_name(self._prefix, self.run, endpoint)}"
        return url

    # -- sending -------------------------------------------------------------------------------

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        """Send each frame to its receiver's queue, in batches under SQS's limits."""
        self._delete_consumed()  # a layer's receipts, before they can time out into redelivery
        by_dst: dict[int, list[tuple[Slot, bytes]]] = {}
        for slot, data in frames:
            by_dst.setdefault(slot.dst, []).append((slot, data))
        for dst, items in by_dst.items():
            for batch in _batches(items):
                self._send_batch(dst, batch)

    def _send_batch(self, dst: int, batch: list[tuple[Slot, bytes]]) -> None:
        entries = {
            str(i): {
                "Id": str(i),
                "MessageBody": slot_text(slot),
                "MessageAttributes": {ATTRIBUTE: {"DataType": "Binary", "BinaryValue": data}},
            }
            for i, (slot, data) in enumerate(batch)
        }
        size = sum(len(slot_text(s)) + len(ATTRIBUTE) + len("Binary") + len(d) for s, d in batch)

        def op() -> None:
            while entries:
                self.stats.count("send_batch")
                self.stats.count("send_units", units_64k(size))
                try:
                    answer = self._sqs.send_message_batch(
                        QueueUrl=self._url_of(dst),
                        Entries=list(entries.values()),  # type: ignore[arg-type]
                    )
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) not in MISSING_QUEUE:
                        raise
                    self._urls[dst] = self._create(dst)  # its receiver has not started yet
                    continue
                for ok in answer.get("Successful", []):
                    entries.pop(ok["Id"], None)
                failed = answer.get("Failed", [])
                if any(f.get("SenderFault") for f in failed):
                    why = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in failed)
                    raise ChannelError(f"sqs at {self._where} refused frames: {why}")
                if entries:  # the service failed some: send those again, a little later
                    time.sleep(0.05)

        self._retry(op, f"send to endpoint {dst}")

    # -- receiving -----------------------------------------------------------------------------

    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        """Long-poll our queue until something is accepted, all is there, or ``deadline``."""

        def receive(wait: int) -> list[Any]:
            def op() -> list[Any]:
                self.stats.count("receive")
                answer = self._sqs.receive_message(
                    QueueUrl=self._url,
                    MaxNumberOfMessages=MAX_BATCH,
                    WaitTimeSeconds=wait,
                    MessageAttributeNames=[ATTRIBUTE],
                )
                messages = list(answer.get("Messages", []))
                payload = sum(len(m.get("Body", "")) + len(_frame(m)) for m in messages)
                self.stats.count("receive_units", units_64k(payload))  # an empty one is 1 too
                return messages

            return self._retry(op, "receive")

        for messages in long_polls(receive, deadline):
            accepted = False
            for m in messages:
                data = _frame(m)
                slot = parse_slot(m.get("Body", ""))
                if slot is None or not isinstance(data, bytes):
                    log.debug("endpoint %d: dropped a message that names no slot", self.me)
                    continue
                accepted = self._deliver(slot, data) or accepted
            self._consumed += [m["ReceiptHandle"] for m in messages if "ReceiptHandle" in m]
            self._delete_consumed(all_of_them=False)
            if accepted or self._satisfied():
                return

    def _delete_consumed(self, all_of_them: bool = True) -> None:
        """Delete what was received, in full batches of ten (all of it with ``all_of_them``)."""
        while len(self._consumed) >= MAX_BATCH or (all_of_them and self._consumed):
            handles, self._consumed = self._consumed[:MAX_BATCH], self._consumed[MAX_BATCH:]
            self._deletes.append(self._pool.submit(self._delete, handles))

    def _delete(self, handles: list[str]) -> None:
        if handles:
            self.stats.count("delete_batch")
            delete_messages(self._sqs, self._url, handles, self.me)

    # -- cleanup -------------------------------------------------------------------------------

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:
        """Delete the run's queues: ours, the coordinator's and ``endpoints``' (with contents)."""
        self._consumed = []  # gone with the queue
        for endpoint in dict.fromkeys([self.me, COORDINATOR, *endpoints]):
            try:
                self.stats.count("delete_queue")
                self._sqs.delete_queue(QueueUrl=self._url_of(endpoint))
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in MISSING_QUEUE:
                    log.warning("could not delete the queue of endpoint %d: %s", endpoint, exc)
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                log.warning("could not delete the queue of endpoint %d: %s", endpoint, exc)

    def close(self) -> None:
        self._delete_consumed()
        for fut in self._deletes:
            fut.exception()
        self._deletes = []
        self._pool.shutdown(wait=True)


def _batches(items: list[tuple[Slot, bytes]]) -> list[list[tuple[Slot, bytes]]]:
    """Split frames into SendMessageBatch requests: at most 10 and 1 MiB each."""
    out: list[list[tuple[Slot, bytes]]] = []
    size = 0
    for slot, data in items:
        need = len(data) + _OVERHEAD
        if not out or len(out[-1]) == MAX_BATCH or size + need > MAX_MESSAGE:
            out.append([])
            size = 0
        out[-1].append((slot, data))
        size += need
    return out
