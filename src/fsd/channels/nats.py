"""The ``nats`` transport: NATS JetStream, the private-cloud counterpart of SNS+SQS.

Core NATS is at-most-once (a message published before its receiver subscribed is lost), and
serverless workers start whenever the platform gets to them, so every frame goes through one
JetStream stream per deployment (``<namespace>``, subjects ``<namespace>.<run>.<dst>.<kind>.
<layer>.<src>.<chunk>``, file storage, work-queue retention: a message is deleted once its
receiver acks it). Each endpoint has its own durable push consumer filtered on its subject prefix,
created with ``deliver_policy=all`` so it also gets what was published before it started.

Exactly-once delivery to the caller: publishers set ``Nats-Msg-Id`` (the server drops a retried
publish inside the duplicate window), and receivers keep the (kind, layer, src) keys they already
delivered. Nothing piles up: the coordinator purges its run's subjects at the end, endpoints
delete their consumers on close, and the stream's ``max_age`` and the consumers'
``inactive_threshold`` expire whatever an abandoned run left behind.

nats-py is asyncio; the Channel API is synchronous. Each endpoint owns an event loop that runs
only inside channel calls, in the caller's thread: no second thread competes with the kernels for
a core, and no thread hand-off sits on the latency path (a loop thread cost ~0.25 ms per send).
While the worker computes, arriving frames wait in the socket. ``send`` writes the frame to the
socket and returns; the stream's acknowledgement is checked during later calls, and a frame whose
ack is missing or negative is re-published (same message id) until ``retry_seconds`` pass, after
which the next call raises ChannelError.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from fsd import wire
from fsd.channels.base import COORDINATOR, Channel, ChannelConfig, units_64k
from fsd.errors import ChannelError, WireError
from fsd.redact import redact

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_PAYLOAD_DEFAULT = 1024 * 1024  # the server's default max_payload
_ACK_WAIT = 5.0  # the server redelivers frames we did not ack after this (dedupe absorbs it)
_ACK_TIMEOUT = 2.0  # we re-publish a frame whose stream ack has not come after this
_DUPLICATE_WINDOW = 120.0


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _endpoint_token(endpoint: int) -> str:
    return "c" if endpoint == COORDINATOR else str(endpoint)


@dataclass
class _Pending:
    """A published frame whose stream acknowledgement has not been seen yet."""

    subject: str
    data: bytes
    ack: asyncio.Future[Any]
    sent: float
    first: float


class NatsChannel(Channel):
    """One endpoint of one run on a JetStream stream."""

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        if not config.address:
            raise ChannelError("nats channel needs a server URL (--nats-url or FSD_NATS_URL)")
        self._ns = config.namespace
        self._stream = config.namespace.upper().replace(".", "_")
        self._prefix = f"{self._ns}.{run.hex()}"
        self._durable = f"{self._ns}_{run.hex()}_{_endpoint_token(me)}".replace(".", "_")
        self._assembler = wire.Reassembler()
        self._ready: dict[tuple[int, int, int], wire.Message] = {}
        self._seen: set[tuple[int, int, int]] = set()
        self._pending: list[_Pending] = []
        self._closed = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._max_payload = _MAX_PAYLOAD_DEFAULT
        self._loop = asyncio.new_event_loop()
        self._waiter: asyncio.Future[None] | None = None
        try:
            self._run(self._connect(), config.connect_timeout + 5)
        except BaseException:
            self._loop.close()
            raise
        self._limit = min(config.max_frame, self._max_payload - 1024)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Drive the endpoint's loop until ``coro`` is done (bounded by ``timeout``)."""
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            raise ChannelError(
                f"nats at {redact(self.config.address)} did not answer in {timeout:g} s"
            ) from None

    # -- connection and stream -----------------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.config
        kwargs: dict[str, Any] = {}
        if cfg.creds_file:
            kwargs["user_credentials"] = cfg.creds_file
        if cfg.token:
            kwargs["token"] = cfg.token
        if cfg.user:
            kwargs["user"] = cfg.user
            kwargs["password"] = cfg.password
        attempts = max(1, int(cfg.retry_seconds / 0.25))
        try:
            self._nc = await nats.connect(
                servers=[s.strip() for s in cfg.address.split(",")],
                connect_timeout=max(1, int(cfg.connect_timeout)),
                reconnect_time_wait=0.25,
                max_reconnect_attempts=attempts,
                pending_size=512 * 1024 * 1024,
                name=f"fsd-{self._durable}",
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
                allow_reconnect=True,
                **kwargs,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ChannelError(
                f"cannot connect to nats at {redact(cfg.address)}: {type(exc).__name__}: {exc}"
            ) from None
        self._max_payload = self._nc.max_payload or _MAX_PAYLOAD_DEFAULT
        self._js = self._nc.jetstream(timeout=cfg.connect_timeout)
        await self._ensure_stream()
        await self._subscribe()

    async def _ensure_stream(self) -> None:
        assert self._js is not None
        wanted = StreamConfig(
            name=self._stream,
            subjects=[f"{self._ns}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.config.ttl_seconds,
            duplicate_window=_DUPLICATE_WINDOW,
            max_msg_size=self._max_payload,
        )
        try:
            await self._js.stream_info(self._stream)
            return
        except nats.js.errors.NotFoundError:
            pass
        except nats.errors.NoRespondersError:
            raise ChannelError(
                f"nats at {redact(self.config.address)} has no JetStream (start it with -js)"
            ) from None
        try:
            await self._js.add_stream(wanted)
        except nats.js.errors.BadRequestError:  # created meanwhile by another endpoint
            await self._js.stream_info(self._stream)

    async def _subscribe(self) -> None:
        assert self._js is not None
        subject = f"{self._prefix}.{_endpoint_token(self.me)}.>"
        config = ConsumerConfig(
            durable_name=self._durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT,
            max_ack_pending=-1,
            filter_subject=subject,
            inactive_threshold=self.config.ttl_seconds,
        )
        await self._js.subscribe(
            subject,
            cb=self._on_msg,
            durable=self._durable,
            stream=self._stream,
            config=config,
            manual_ack=True,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def _on_error(self, exc: Exception) -> None:
        log.debug("endpoint %d: nats error: %s", self.me, exc)

    async def _on_disconnect(self) -> None:
        if not self._closed:
            log.warning("endpoint %d: disconnected from nats; reconnecting", self.me)

    async def _on_reconnect(self) -> None:
        log.warning("endpoint %d: reconnected to nats", self.me)

    # -- receiving -----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self.stats.count("receive")
        self.stats.count("receive_units", units_64k(len(msg.data)))
        try:
            header = wire.peek_header(msg.data)
            if header.run != self.run or header.dst != self.me:
                raise WireError("frame does not belong to this endpoint")
            whole = self._assembler.add(msg.data)
        except WireError as exc:
            log.warning("endpoint %d dropped invalid frame on %s: %s", self.me, msg.subject, exc)
            with contextlib.suppress(nats.errors.Error):
                await msg.term()
            return
        if whole is not None:
            key = (int(whole.header.kind), whole.header.layer, whole.header.src)
            if key not in self._seen and key not in self._ready:
                self._ready[key] = whole
                if self._waiter is not None:
                    _wake(self._waiter)
        with contextlib.suppress(nats.errors.Error):  # a lost ack only means a redelivery
            await msg.ack()
            self.stats.count("ack")

    def collect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        wanted = [(int(kind), layer, s) for s in sources]
        got: dict[int, wire.Message] = {}
        # no timeout wrapper (a task per call, ~0.1 ms): _collect keeps its own deadline
        try:
            self._loop.run_until_complete(self._collect(wanted, got, timeout))
        except (nats.errors.Error, OSError) as exc:
            raise ChannelError(
                f"endpoint {self.me}: nats at {redact(self.config.address)} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return got

    async def _collect(
        self, wanted: list[tuple[int, int, int]], got: dict[int, wire.Message], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await self._check_acks()
            for key in wanted:
                msg = self._ready.pop(key, None)
                if msg is not None:
                    self._seen.add(key)
                    got[key[2]] = msg
            wanted = [k for k in wanted if k[2] not in got and k not in self._seen]
            left = deadline - time.monotonic()
            if not wanted or left <= 0:
                return
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(min(left, _ACK_TIMEOUT / 4), _wake, waiter)
            await waiter
            timer.cancel()

    # -- sending -------------------------------------------------------------------------------

    def send(self, msg: wire.Message) -> int:
        h = msg.header
        frame = wire.encode(msg, compress=self.config.compress)
        chunks = wire.split(frame, self._limit)
        base = f"{self._prefix}.{_endpoint_token(h.dst)}.{int(h.kind)}.{h.layer}.{h.src}"
        # no timeout wrapper (it costs a task per call): _send never waits on the network
        try:
            self._loop.run_until_complete(self._send(base, chunks))
        except (nats.errors.Error, OSError) as exc:
            raise ChannelError(
                f"endpoint {self.me}: cannot publish to nats at {redact(self.config.address)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        total = sum(len(c) for c in chunks)
        self.stats.messages += len(chunks)
        self.stats.bytes += total
        return total

    async def _send(self, base: str, chunks: list[bytes]) -> None:
        await self._check_acks()
        now = time.monotonic()
        for i, chunk in enumerate(chunks):
            subject = f"{base}.{i}"
            ack = await self._publish(subject, chunk)
            self._pending.append(_Pending(subject, chunk, ack, now, now))
        await self._push_out()

    async def _publish(self, subject: str, data: bytes) -> asyncio.Future[Any]:
        assert self._js is not None
        self.stats.count("publish")
        self.stats.count("publish_units", units_64k(len(data)))
        # the subject is unique per frame in a run: the server drops a re-publish as a duplicate
        return await self._js.publish_async(
            subject,
            data,
            headers={"Nats-Msg-Id": subject},
            wait_stall=self.config.retry_seconds,
        )

    async def _push_out(self) -> None:
        """Put what was published on the socket now, without a server round trip.

        nats-py leaves the write to its flusher task, a few loop turns later; doing the flusher's
        write here saves ~0.1 ms per send. Falls back to those loop turns if the client's
        internals are not what this expects (pinned to nats-py 2.x in pyproject).
        """
        nc = self._nc
        assert nc is not None
        transport = getattr(nc, "_transport", None)
        pending = getattr(nc, "_pending", None)
        if nc.is_connected and transport is not None and isinstance(pending, list) and pending:
            transport.writelines(pending[:])
            nc._pending = []
            nc._pending_data_size = 0
            return
        for _ in range(4):
            if not nc._pending_data_size or not nc.is_connected:
                return
            await asyncio.sleep(0)
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await nc.flush(timeout=1)

    async def _check_acks(self) -> None:
        """Drop acknowledged frames; re-publish failed or overdue ones; fail after the budget."""
        if not self._pending:
            return
        now = time.monotonic()
        keep: list[_Pending] = []
        resent = False
        for p in self._pending:
            if p.ack.done() and not p.ack.cancelled() and p.ack.exception() is None:
                continue
            failed = p.ack.done() or now - p.sent > _ACK_TIMEOUT
            if failed:
                if now - p.first > self.config.retry_seconds:
                    why = p.ack.exception() if p.ack.done() and not p.ack.cancelled() else None
                    raise ChannelError(
                        f"endpoint {self.me}: nats at {redact(self.config.address)} did not "
                        f"store {p.subject} within {self.config.retry_seconds:g} s"
                        + (f": {why}" if why else "")
                    )
                if not p.ack.done():
                    p.ack.cancel()
                try:
                    p.ack = await self._publish(p.subject, p.data)
                except (nats.errors.Error, OSError) as exc:
                    log.debug("endpoint %d: re-publish of %s failed: %s", self.me, p.subject, exc)
                    p.ack = self._loop.create_future()
                    p.ack.set_exception(ChannelError(str(exc)))
                p.sent = now
                resent = True
            keep.append(p)
        self._pending = keep
        if resent:
            await self._push_out()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send so far is stored by the server (or raise why not)."""
        limit = self.config.retry_seconds + 5 if timeout is None else timeout
        self._run(self._drain(), limit)

    async def _drain(self) -> None:
        while self._pending:
            await self._check_acks()
            if self._pending:
                await asyncio.wait(
                    [p.ack for p in self._pending],
                    timeout=0.05,
                    return_when=asyncio.FIRST_COMPLETED,
                )

    # -- cleanup -------------------------------------------------------------------------------

    def purge_run(self) -> None:
        """Delete whatever is left of this run on the stream (the coordinator calls it)."""
        assert self._js is not None
        try:
            self._run(self._js.purge_stream(self._stream, subject=f"{self._prefix}.>"), 10)
        except (ChannelError, nats.errors.Error) as exc:
            log.warning("could not purge run %s: %s (max_age will)", self.run.hex(), exc)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        except ChannelError as exc:
            log.error("endpoint %d: closing with undelivered sends: %s", self.me, exc)
        if self._nc is not None:
            try:
                self._run(self._shutdown(), 10)
            except ChannelError as exc:
                log.warning("endpoint %d: nats shutdown: %s", self.me, exc)
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._nc is not None and self._js is not None
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await self._js.delete_consumer(self._stream, self._durable)
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await self._nc.close()
