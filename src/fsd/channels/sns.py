"""The ``sns`` transport: FSD-Inference's pub-sub scheme (SNS topic, SQS queue per endpoint slot).

Every frame is published to the deployment's topic ``<prefix>-frames`` with a ``dst`` message
attribute; each endpoint slot has a queue ``<prefix>-sns-c`` / ``<prefix>-sns-w<i>``, subscribed
with ``RawMessageDelivery`` and the filter policy ``{"dst": ["w<i>"]}``, so SNS hands each frame
to its receiver's queue only. Topic, queues and subscriptions belong to the **deployment**, not
to a run: SNS takes up to 15 minutes to apply a new or changed filter policy, so per-run
subscriptions would drop frames. They are created idempotently (same name and attributes, same
answer) by whoever needs them first: an endpoint its own when it opens, a sender its target's
before its first publish to it, so a frame published before its receiver started is kept. On
AWS, create them ahead of the first run (the deployment template) so that no frame meets a
filter still propagating.

Payloads: the topic stays a standard 256 KiB one. 1 MiB payloads would allow only 100
subscriptions per topic, i.e. 99 workers; at 256 KiB a topic takes millions, so any worker count
fits one topic, and the bill is the same (SNS and SQS bill per 64 KB either way; only the request
count differs for frames over 256 KiB). A frame travels base64-encoded in the body: moto cannot
deliver a Binary attribute raw to SQS (its SQS model fails hashing the value), and an SNS message
body must be text.

Queues are shared by the deployment's concurrent runs, and SQS cannot filter, so a receiver
decides about every message of another run (attribute ``run``) it gets, and no run is starved
or failed by another's leftovers:

- a message of a live run: made visible again at once, for that run's receiver. A run is live
  while its coordinator's marker queue ``<prefix>-<run hex>-live`` exists: the coordinator
  makes it (tagged with owner and expiry) before any worker starts and deletes it in
  :meth:`purge_run`, on every exit path; what a coordinator killed outright leaves is reaped by
  the next (:func:`fsd.channels.aws.reap_runs`) or, where none reaps (functions), ends at the
  marker's expiry tag (``ttl_seconds`` after the run began);
- a message of a run that is not live: deleted, unless it is a genuine frame (its MAC verifies
  under that run's key, which every holder of the deployment secret derives) younger than
  :data:`GRACE` seconds, as SQS may take a moment to show a new marker: that one is only put
  aside for :data:`PUT_ASIDE` seconds, so it can neither be lost nor hold the receiver's own
  frames behind it. Whatever anyone publishes under a made-up run id goes at once.

A run that failed (its coordinator sent ABORT) also drains what it left in its endpoints' queues
before it returns (:meth:`purge_run`); what a dead worker held invisible comes back after the
visibility timeout and goes at the next receive of that queue.

Activations wait a moment in an outbox and go out together, up to 10 per PublishBatch whatever
their receivers (the topic routes them): a worker publishes a layer in about W/10 requests, where
SQS needs one SendMessageBatch per receiver.

Counted operations (:attr:`SnsChannel.OPS`): ``publish_batch`` = PublishBatch requests,
``publish_units`` = their 64 KB units (how SNS bills a batch: its total payload per 64 KB chunk),
``receive`` = ReceiveMessage requests, ``receive_units``, ``queue_batch`` = DeleteMessageBatch and
ChangeMessageVisibilityBatch requests, ``setup`` = CreateTopic, CreateQueue and Subscribe
requests, ``liveness`` = the run markers' CreateQueue, GetQueueUrl and DeleteQueue requests and
reaping's. Each published message reaches one queue (the filter), so ``publish_units`` also
counts the deliveries to SQS: SNS does not charge them, and attribute filter policies are free
(https://aws.amazon.com/sns/pricing/); they are still shown, as ``sns_delivery``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions

from fsd import auth, wire
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
    tagged_expiry,
)
from fsd.channels.base import COORDINATOR, ChannelConfig, Slot, options, units_64k
from fsd.errors import ChannelError, WireError

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_PUBLISH = 256 * 1024  # SNS standard topic: a message with its attributes, and a batch
_OVERHEAD = 512  # attributes (dst, run, slot) with their names and types, with room to spare
_VISIBILITY = 30
_LINGER = 0.005  # an outbox not drained by a poll or a full batch goes out after this
GRACE = 10.0
"""Seconds a frame of a run whose marker is not found is put aside rather than deleted."""
PUT_ASIDE = 1
"""Seconds such a frame stays invisible: the receiver's own frames get past it meanwhile."""
_LIVE_FOR = 2.0  # seconds a run found live is believed live without asking again
_DRAIN_ROUNDS = 3  # receives per endpoint queue when a failed run drains what it left


def _who(endpoint: int) -> str:
    return "c" if endpoint == COORDINATOR else f"w{endpoint}"


def queue_name(prefix: str, endpoint: int) -> str:
    return f"{prefix}-sns-{_who(endpoint)}"


def marker_name(prefix: str, run: bytes) -> str:
    """The queue whose existence says that ``run`` is live (made and deleted by its
    coordinator; never receives anything)."""
    return f"{prefix}-{run.hex()}-live"


class SnsChannel(AwsChannel):
    """One endpoint of one run on the deployment's topic and its slot's queue."""

    OPS = (
        "publish_batch",
        "publish_units",
        "receive",
        "receive_units",
        "queue_batch",
        "setup",
        "liveness",
    )
    BILLING = {
        "publish_units": (("sns_publish", 1.0), ("sns_delivery", 1.0)),
        "receive_units": (("sqs_request", 1.0),),
        "queue_batch": (("sqs_request", 1.0),),
        "setup": (("sqs_request", 1.0),),  # SNS's API requests bill like publishes: near enough
        "liveness": (("sqs_request", 1.0),),
    }
    # us-east-1 list prices (https://aws.amazon.com/sns/pricing/): a standard topic's publishes,
    # $0.50 per million requests, each 64 KB chunk of a publish = 1 (a PublishBatch: its total
    # payload, per 64 KB); deliveries to SQS queues are not charged, and filter policies on
    # message attributes are free, counted so the bill shows them. SQS's request: fsd.channels.sqs
    PRICES = {"sns_publish": 0.50 / 1e6, "sns_delivery": 0.0}
    SERVER = "AWS_ENDPOINT_URL_SNS, AWS_ENDPOINT_URL or AWS credentials"

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        self._sns: SNSClient = aws_client(config, "sns")
        own = options(config, AwsOptions)
        self._sqs: SQSClient = aws_client(config, "sqs", address=own.queue_address or None)
        self._where = config.address or f"sns.{own.region}.amazonaws.com"
        self._prefix = config.namespace
        self._run_hex = run.hex()
        # base64 makes 4 bytes of 3: the frame, encoded, plus attributes fits one message
        self.frame_limit = min(config.max_frame, (MAX_PUBLISH - _OVERHEAD) // 4 * 3)
        self._subscribed: set[int] = set()  # endpoints whose queue and subscription we made sure of
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"fsd-sns-{me}")
        self._acks: list[Future[None]] = []
        self._lock = threading.Lock()  # the outbox, shared with the lingering publish
        self._outbox: list[dict[str, Any]] = []
        self._outbox_bytes = 0
        self._lingering: Future[None] | None = None
        self._late_failure: ChannelError | None = None
        self._runs: dict[bytes, tuple[bool, float]] = {}  # run -> (live, when we asked)
        self._expiry: dict[bytes, float] = {}  # run -> its marker's expiry (time.time())
        self._aborted = False  # this (coordinator) endpoint sent ABORT: purge_run drains
        self._marker = ""

        def topic() -> str:
            self.stats.count("setup")
            return self._sns.create_topic(Name=f"{self._prefix}-frames")["TopicArn"]

        self._topic = self._retry(topic, "create the topic")
        self._url = self._ensure(me)
        if me == COORDINATOR:  # the run is live from now until purge_run
            self._marker = self._retry(self._make_marker, "mark the run live")
        if me == COORDINATOR and config.reap:
            reap_runs(
                self._sqs,
                self._where,
                self._prefix,
                "live",
                run,
                config.ttl_seconds,
                lambda: self.stats.count("liveness"),
            )

    def _make_marker(self) -> str:
        self.stats.count("liveness")
        return self._sqs.create_queue(
            QueueName=marker_name(self._prefix, self.run),
            Attributes={"MessageRetentionPeriod": "60"},
            tags=run_tags(self.config.ttl_seconds),
        )["QueueUrl"]

    def _retry(self, op: Callable[[], T], what: str) -> T:
        return retry(op, f"sns at {self._where}", what, self.config.retry_seconds)

    def _ensure(self, endpoint: int) -> str:
        """The queue of ``endpoint``, created and subscribed with its filter if it was not."""
        name = queue_name(self._prefix, endpoint)
        # arn:aws:sns:<region>:<account>:<topic> -> the queue's ARN in the same account
        _, partition, _, region, account, _ = self._topic.split(":", 5)
        queue_arn = f"arn:{partition}:sqs:{region}:{account}:{name}"
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": self._topic}},
                }
            ],
        }

        def create() -> str:
            self.stats.count("setup")
            return self._sqs.create_queue(
                QueueName=name,
                Attributes={
                    "MessageRetentionPeriod": str(
                        int(min(max(self.config.ttl_seconds, 60), 14 * 86400))
                    ),
                    "VisibilityTimeout": str(_VISIBILITY),
                    "Policy": json.dumps(policy),
                },
            )["QueueUrl"]

        def subscribe() -> None:
            self.stats.count("setup")
            self._sns.subscribe(
                TopicArn=self._topic,
                Protocol="sqs",
                Endpoint=queue_arn,
                Attributes={
                    "RawMessageDelivery": "true",
                    "FilterPolicy": json.dumps({"dst": [_who(endpoint)]}),
                },
                ReturnSubscriptionArn=True,
            )

        url = self._retry(create, f"create the queue of endpoint {endpoint}")
        self._retry(subscribe, f"subscribe the queue of endpoint {endpoint}")
        self._subscribed.add(endpoint)
        return url

    # -- sending -------------------------------------------------------------------------------

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        """Publish frames to the topic for their receivers, in batches under SNS's limits.

        One PublishBatch carries frames for different receivers (the topic routes them), so
        activations wait in an outbox until a batch is full, this endpoint polls, flushes or
        closes, or ``_LINGER`` seconds pass: a worker's sends of one layer go out in about W/10
        requests instead of W. Any other kind (RESULT, ABORT, ...) goes out at once, with
        everything before it.
        """
        self._raise_late_failure()
        for slot, data in frames:
            if slot.dst not in self._subscribed:
                self._ensure(slot.dst)
            entry = self._entry(slot, data)
            need = _size(entry)
            with self._lock:
                if self._outbox and (
                    len(self._outbox) == MAX_BATCH or self._outbox_bytes + need > MAX_PUBLISH
                ):
                    self._drain_locked()
                self._outbox.append(entry)
                self._outbox_bytes += need
        if any(slot.kind == int(wire.Kind.ABORT) for slot, _ in frames):
            self._aborted = True
        if any(slot.kind != int(wire.Kind.ACT) for slot, _ in frames):
            self._drain()
        elif self._lingering is None or self._lingering.done():
            self._lingering = self._pool.submit(self._linger)

    def _linger(self) -> None:
        """Publish what the outbox holds a moment from now, should nothing else have."""
        time.sleep(_LINGER)
        try:
            self._drain()
        except ChannelError as exc:
            self._late_failure = exc

    def _raise_late_failure(self) -> None:
        failure, self._late_failure = self._late_failure, None
        if failure is not None:
            raise failure

    def _drain(self) -> None:
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        if not self._outbox:
            return
        batch, size = self._outbox, self._outbox_bytes
        self._outbox, self._outbox_bytes = [], 0
        for i, entry in enumerate(batch):
            entry["Id"] = str(i)
        self._publish(batch, size)

    def flush(self, timeout: float | None = None) -> None:
        """Publish the outbox; raise a failure of a publish made in the background."""
        self._drain()
        self._raise_late_failure()

    def _entry(self, slot: Slot, data: bytes) -> dict[str, Any]:
        text = slot_text(slot)
        return {
            "Id": "",
            "Message": base64.b64encode(data).decode("ascii"),
            "MessageAttributes": {
                "dst": {"DataType": "String", "StringValue": _who(slot.dst)},
                "run": {"DataType": "String", "StringValue": self._run_hex},
                "slot": {"DataType": "String", "StringValue": text},
            },
        }

    def _publish(self, batch: list[dict[str, Any]], size: int) -> None:
        entries = {e["Id"]: e for e in batch}

        def op() -> None:
            while entries:
                self.stats.count("publish_batch")
                self.stats.count("publish_units", units_64k(size))
                answer = self._sns.publish_batch(
                    TopicArn=self._topic,
                    PublishBatchRequestEntries=list(entries.values()),  # type: ignore[arg-type]
                )
                for ok in answer.get("Successful", []):
                    entries.pop(ok["Id"], None)
                failed = answer.get("Failed", [])
                if any(f.get("SenderFault") for f in failed):
                    why = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in failed)
                    raise ChannelError(f"sns at {self._where} refused frames: {why}")
                if entries:
                    time.sleep(0.05)

        self._retry(op, "publish")

    # -- receiving -----------------------------------------------------------------------------

    def _receive(self, url: str, wait: int, *, retry: bool = True) -> list[Any]:
        def op() -> list[Any]:
            self.stats.count("receive")
            answer = self._sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=wait,
                MessageAttributeNames=["run", "slot"],
                AttributeNames=["SentTimestamp"],
            )
            messages = list(answer.get("Messages", []))
            payload = sum(len(m.get("Body", "")) for m in messages)
            self.stats.count("receive_units", units_64k(payload))  # an empty one is 1 too
            return messages

        if not retry:  # once: a queue that does not exist holds nothing
            try:
                return op()
            except botocore.exceptions.ClientError as e:
                if error_code(e) in MISSING_QUEUE:
                    return []
                raise ChannelError(f"sns at {self._where}: cannot receive: {e}") from None
            except (botocore.exceptions.BotoCoreError, OSError) as e:
                raise ChannelError(f"sns at {self._where}: cannot receive: {e}") from None
        return self._retry(op, "receive")

    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        """Long-poll our slot's queue; decide at once about every other run's message."""
        self.flush()
        for messages in long_polls(lambda wait: self._receive(self._url, wait), deadline):
            accepted = False
            mine: list[str] = []
            for m in messages:
                attrs = m.get("MessageAttributes", {})
                if attrs.get("run", {}).get("StringValue") != self._run_hex:
                    continue
                mine.append(m["ReceiptHandle"])
                slot = parse_slot(attrs.get("slot", {}).get("StringValue", ""))
                data = _decode(m.get("Body", ""), 2 * MAX_PUBLISH)
                if slot is None or data is None:
                    log.debug("endpoint %d: dropped a message that is no frame", self.me)
                    continue
                accepted = self._deliver(slot, data) or accepted
            others = [m for m in messages if m.get("ReceiptHandle") not in mine]
            mine += self._sort_out(self._url, others)
            if mine:
                self._acks.append(self._pool.submit(self._delete, self._url, mine))
            if accepted or self._satisfied():
                return

    def _sort_out(self, url: str, messages: list[Any], *, ended: bytes = b"") -> list[str]:
        """Hand back other runs' frames that are still wanted; return the receipt handles of
        those to delete (not frames, forged, or of runs that ended; ``ended`` is one more)."""
        now_ms = time.time() * 1000
        drop: list[str] = []
        back: dict[int, list[str]] = {0: [], PUT_ASIDE: []}
        for m in messages:
            handle = m["ReceiptHandle"]
            run = _run_of(m)
            if run is None or run == ended:
                drop.append(handle)
            elif self._live(run):  # whoever's key sealed it: that run's receiver decides
                back[0].append(handle)
            else:
                sent = m.get("Attributes", {}).get("SentTimestamp", "")
                young = sent.isdigit() and now_ms - int(sent) < GRACE * 1000
                (back[PUT_ASIDE] if young and self._genuine(m, run) else drop).append(handle)
        for seconds, handles in back.items():
            if handles:
                self._hand_back(url, handles, seconds)
        if drop:
            log.debug(
                "endpoint %d: deleting %d messages of runs gone or forged", self.me, len(drop)
            )
        return drop

    def _genuine(self, message: Any, run: bytes) -> bool:
        """Whether a message's frame verifies under ``run``'s key (derived from the deployment
        secret) and names that run: a forgery need not wait out the grace period."""
        data = _decode(message.get("Body", ""), 2 * MAX_PUBLISH)
        if data is None:
            return False
        try:
            frame = wire.unseal(data, auth.frame_key(self.config.secret, run))
            return wire.peek_header(frame).run == run
        except WireError:
            return False

    def _live(self, run: bytes) -> bool:
        """Whether ``run``'s marker exists and has not expired (a run found ended stays ended).

        The expiry (its tag) also ends a run whose coordinator was killed where no reaper runs
        (a function's role lists no queues): its frames go once it passes.
        """
        known = self._runs.get(run)
        if known is not None and (not known[0] or time.monotonic() - known[1] < _LIVE_FOR):
            return known[0] and time.time() < self._expiry.get(run, math.inf)
        self.stats.count("liveness")
        try:
            url = self._sqs.get_queue_url(QueueName=marker_name(self._prefix, run))["QueueUrl"]
            live = True
            if run not in self._expiry:
                self.stats.count("liveness")
                expires = tagged_expiry(self._sqs.list_queue_tags(QueueUrl=url).get("Tags", {}))
                self._expiry[run] = math.inf if expires is None else expires
        except botocore.exceptions.ClientError as exc:
            live = error_code(exc) not in MISSING_QUEUE  # unsure: keep it
        except (botocore.exceptions.BotoCoreError, OSError):
            live = True
        if len(self._runs) > 4096:
            self._runs.clear()
            self._expiry.clear()
        self._runs[run] = (live, time.monotonic())
        return live and time.time() < self._expiry.get(run, math.inf)

    def _hand_back(self, url: str, handles: list[str], seconds: int = 0) -> None:
        """Make other runs' frames visible again, at once (or in ``seconds``)."""
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds}
            for i, h in enumerate(handles)
        ]
        self.stats.count("queue_batch")
        try:
            self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            log.debug("endpoint %d: could not hand frames back (%s)", self.me, e)

    def _delete(self, url: str, handles: list[str]) -> None:
        for start in range(0, len(handles), MAX_BATCH):
            self.stats.count("queue_batch")
            delete_messages(self._sqs, url, handles[start : start + MAX_BATCH], self.me)

    # -- cleanup -------------------------------------------------------------------------------

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:
        """The run has ended: its marker goes, so every receiver deletes what is left of it;
        a failed run (it sent ABORT) also drains its endpoints' queues now."""
        if self.me != COORDINATOR or not self._marker:
            return
        try:
            self.flush()
        except ChannelError as exc:
            log.warning("endpoint %d: could not publish before the purge: %s", self.me, exc)
        self.stats.count("liveness")
        marker, self._marker = self._marker, ""
        try:
            self._sqs.delete_queue(QueueUrl=marker)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
            # the reaper or the marker's expiry ends it; a server that is away drains nothing
            log.warning("could not delete the live marker of run %s: %s", self._run_hex, e)
            return
        if self._aborted:
            for endpoint in dict.fromkeys([COORDINATOR, *endpoints]):
                if not self._drain_queue(endpoint):
                    return

    def _drain_queue(self, endpoint: int) -> bool:
        """Delete what this (ended) run and runs gone left in ``endpoint``'s slot queue, with
        no retry (a failed run's server may be what failed); False when it could not."""
        url = self._url if endpoint == self.me else self._queue_url(endpoint)
        try:
            for _ in range(_DRAIN_ROUNDS):
                messages = self._receive(url, 0, retry=False)
                if not messages:
                    break
                drop = self._sort_out(url, messages, ended=self.run)
                if drop:
                    self._delete(url, drop)
        except ChannelError as exc:
            log.debug("endpoint %d: could not drain the queue of %d: %s", self.me, endpoint, exc)
            return False
        return True

    def _queue_url(self, endpoint: int) -> str:
        base = self._url.rsplit("/", 1)[0]
        return f"{base}/{queue_name(self._prefix, endpoint)}"

    def close(self) -> None:
        try:
            self.flush()
        except ChannelError as exc:
            log.error("endpoint %d: closing with unpublished frames: %s", self.me, exc)
        if self._marker:  # closed without an end of run: the run is over all the same
            self.purge_run()
        for fut in self._acks:
            fut.exception()
        self._acks = []
        self._pool.shutdown(wait=True)


def _size(entry: dict[str, Any]) -> int:
    """What SNS counts of a message: the body and each attribute's name, type and value."""
    attrs = entry["MessageAttributes"]
    return len(entry["Message"]) + sum(
        len(k) + len(v["DataType"]) + len(v["StringValue"]) for k, v in attrs.items()
    )


def _run_of(message: Any) -> bytes | None:
    """The run id a message's ``run`` attribute names, or None (hostile until checked)."""
    text = message.get("MessageAttributes", {}).get("run", {}).get("StringValue", "")
    if not isinstance(text, str) or len(text) != 2 * wire.RUN_ID_BYTES:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _decode(body: str, limit: int) -> bytes | None:
    if not isinstance(body, str) or len(body) > limit:
        return None
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
