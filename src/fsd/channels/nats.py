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
import binascii
import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import nkeys  # type: ignore[import-untyped]
from nats.aio.client import Client, RawCredentials
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

from fsd import settings
from fsd.channels.base import (
    COORDINATOR,
    Channel,
    ChannelConfig,
    Slot,
    TransportOptions,
    options,
    units_64k,
)
from fsd.errors import ChannelError, FsdError, InputError, WireError
from fsd.redact import redact, redact_text
from fsd.settings import Variable
from fsd.urls import server_urls

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("nats", "tls", "ws", "wss")
"""What a NATS URL may use; ``host:port`` alone means ``nats://``."""
PORTS = {"nats": 4222, "tls": 4222}
"""NATS's client port: a ``nats`` or ``tls`` URL without a port means it."""


def nats_servers(address: str, source: str = "FSD_NATS_URL") -> list[str]:
    """``address``'s comma-separated URLs, checked and made explicit, as the client is given
    them: ``host:port`` becomes ``nats://host:port``, a missing port NATS's 4222. (Some nats-py
    releases read a list's entries as full URLs: ``127.0.0.1:4222`` had no host for them, and
    the connection failed after its timeout instead of working.) Websocket and plain URLs are
    not mixed, which the client refuses too. User and password may be embedded."""
    servers = server_urls(address, source, SCHEMES, PORTS)
    if len({url.startswith(("ws://", "wss://")) for url in servers}) > 1:
        raise InputError(f"{source} mixes websocket (ws, wss) and nats/tls URLs")
    return servers


_MAX_PAYLOAD_DEFAULT = 1024 * 1024  # the server's default max_payload
_ACK_WAIT = 5.0  # the server redelivers frames we did not ack after this (dedupe absorbs it)
_ACK_TIMEOUT = 2.0  # we re-publish a frame whose stream ack has not come after this
_DUPLICATE_WINDOW = 120.0
# what nats-server says when it refuses a login or an action (error_cb), in lower case
_REFUSED = ("authorization violation", "authentication", "permissions violation")


CLUSTER_URL = "nats://nats.fsd:4222"
"""NATS inside the cluster (stack.yml, the operator): the ``nats`` service in namespace ``fsd``."""

MAX_CREDS_BYTES = 64 * 1024
"""Largest ``.creds`` file read (a user JWT and its seed: about 1 KB; a JWT full of
permissions a few KB)."""
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _line_after(lines: list[str], marker: str) -> str | None:
    for i, line in enumerate(lines[:-1]):
        if marker in line:
            return lines[i + 1].strip()
    return None


def read_creds(path: str, error: type[FsdError], source: str = "FSD_NATS_CREDS") -> str:
    """The text of the NATS ``.creds`` file at ``path``, checked: a user JWT and a valid user
    NKey seed, each on the line after its ``BEGIN`` marker; ``error`` (never showing the file's
    content) if it is not one.

    nats-py reads the file itself without checks: one with no JWT marker kept it reading past
    the end forever, on the event loop, where no timeout could end it. It is given this checked
    text instead (``RawCredentials``), with plain ``\\n`` line ends as its parser expects.
    """

    def refused(why: str) -> FsdError:
        return error(f"{source}: {path} is not a NATS .creds file: {why}")

    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CREDS_BYTES + 1)
    except OSError as exc:
        raise error(f"{source}: cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CREDS_BYTES:
        raise refused(f"larger than {MAX_CREDS_BYTES} bytes")
    try:
        lines = raw.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise refused("not ASCII text") from None
    jwt = _line_after(lines, "BEGIN NATS USER JWT")
    if jwt is None or not _JWT.fullmatch(jwt):
        raise refused("no user JWT after a 'BEGIN NATS USER JWT' line")
    seed = _line_after(lines, "BEGIN USER NKEY SEED")
    try:
        if seed is None or not seed.startswith("SU"):
            raise ValueError(seed)
        nkeys.from_seed(bytearray(seed.encode())).wipe()
    except (nkeys.NkeysError, ValueError, binascii.Error):
        raise refused("no user NKey seed after a 'BEGIN USER NKEY SEED' line") from None
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _endpoint_token(endpoint: int) -> str:
    return "c" if endpoint == COORDINATOR else str(endpoint)


def _endpoint_id(token: str) -> int:
    """Inverse of _endpoint_token; ValueError for anything else."""
    if token == "c":
        return COORDINATOR
    if not token.isdigit() or len(token) > 5:
        raise ValueError(token)
    return int(token)


@dataclass
class _Pending:
    """A published frame whose stream acknowledgement has not been seen yet."""

    subject: str
    data: bytes
    msg_id: str
    ack: asyncio.Future[Any]
    sent: float
    first: float


@dataclass(frozen=True)
class NatsOptions(TransportOptions):
    """How to sign in to NATS: a ``.creds`` file, a token, or a user and password (the URL is
    the config's ``address``)."""

    creds_file: str = ""  # a .creds file (JWT + NKey seed), passed by path
    token: str = field(default="", repr=False)
    user: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    ADDRESS = "FSD_NATS_URL"
    VARIABLES = (
        Variable(
            "FSD_NATS_URL",
            "NATS server URL(s), comma-separated; may embed user:password",
            flag="--nats-url",
            flag_help="NATS server URL (else env FSD_NATS_URL; none: embedded)",
        ),
        Variable(
            "FSD_NATS_CREDS",
            "path of a NATS .creds file (JWT + NKey seed)",
            path_file="fsd-nats-credentials",
        ),
        Variable("FSD_NATS_TOKEN", "NATS token", secret=True, secret_file="fsd-nats-token"),
        Variable(
            "FSD_NATS_USER",
            "NATS user (with FSD_NATS_PASSWORD)",
            secret=True,
            secret_file="fsd-nats-user",
        ),
        Variable(
            "FSD_NATS_PASSWORD", "NATS password", secret=True, secret_file="fsd-nats-password"
        ),
    )

    CLUSTER = (Variable("FSD_NATS_URL", "NATS for the functions", default=CLUSTER_URL),)
    CLUSTER_SECRETS = ("fsd-nats-token",)

    @classmethod
    def cluster_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        return {"FSD_NATS_URL": settings.text(env, "FSD_NATS_URL", CLUSTER_URL)}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NatsOptions:
        """The sign-in settings; a creds file is checked now, before any connection."""
        creds = settings.text(env, "FSD_NATS_CREDS")
        if creds and not os.path.isfile(creds):
            raise InputError(f"FSD_NATS_CREDS names a file that does not exist: {creds}")
        if creds:
            read_creds(creds, InputError)
        return cls(
            creds_file=creds,
            token=settings.text(env, "FSD_NATS_TOKEN"),
            user=settings.text(env, "FSD_NATS_USER"),
            password=settings.text(env, "FSD_NATS_PASSWORD"),
        )

    def secret_env(self) -> dict[str, str]:
        given = {
            "FSD_NATS_CREDS": self.creds_file,  # a path on this machine
            "FSD_NATS_TOKEN": self.token,
            "FSD_NATS_USER": self.user,
            "FSD_NATS_PASSWORD": self.password,
        }
        return {k: v for k, v in given.items() if v}


class NatsChannel(Channel):
    """One endpoint of one run on a JetStream stream."""

    OPS = ("publish", "publish_units", "receive", "receive_units", "ack")
    # priced as its AWS counterpart: SNS publishes, each delivered to one SQS queue (free),
    # received there and deleted (DeleteMessageBatch takes 10 acknowledgements), at the prices
    # the sns and sqs transports declare
    BILLING = {
        "publish_units": (("sns_publish", 1.0), ("sns_delivery", 1.0)),
        "receive_units": (("sqs_request", 1.0),),
        "ack": (("sqs_request", 0.1),),
    }
    SERVER = "--nats-url or FSD_NATS_URL"
    OPTIONS = NatsOptions
    EMBEDDED = "fsd.embedded.nats:nats_server"
    LOGGERS = ("nats",)
    EXAMPLE = "FSD_NATS_URL=nats://nats:4222 fsd run --channel nats"
    STACK = True

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        flag = flags.get("nats_url", "")
        address = flag or settings.text(env, "FSD_NATS_URL")
        options = NatsOptions.from_env(env)
        if address:
            nats_servers(address, "--nats-url" if flag else "FSD_NATS_URL")
        return dataclasses.replace(config, address=address, options=options)

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        if not config.address:
            raise ChannelError("nats channel needs a server URL (--nats-url or FSD_NATS_URL)")
        self._ns = config.namespace
        self._stream = config.namespace.upper().replace(".", "_")
        self._prefix = f"{self._ns}.{run.hex()}"
        self._durable = self._consumer(me)
        self._pending: list[_Pending] = []
        self._closed = False
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._max_payload = _MAX_PAYLOAD_DEFAULT
        self._loop = asyncio.new_event_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._refused = ""  # why the server refused our login or a permission, once it did
        self._refusal: asyncio.Future[None] | None = None
        self._last_error = ""  # the client's last error (a refused connection...), for messages
        try:
            self._run(self._connect(), config.connect_timeout + 5)
        except BaseException:
            self._close_loop()
            raise
        self.frame_limit = min(config.max_frame, self._max_payload - 1024)

    def _consumer(self, endpoint: int) -> str:
        """The durable consumer name of ``endpoint`` in this run (the coordinator purges them)."""
        return f"{self._ns}_{self.run.hex()}_{_endpoint_token(endpoint)}"

    def _slot(self, subject: str) -> Slot | None:
        """The slot a subject of this endpoint names, or None when it names none."""
        parts = subject.split(".")
        if len(parts) != 7 or ".".join(parts[:2]) != self._prefix:
            return None
        dst, kind, layer, src, chunk = parts[2:]
        try:
            return Slot(int(kind), int(layer), _endpoint_id(src), _endpoint_id(dst), int(chunk))
        except ValueError:
            return None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Drive the endpoint's loop until ``coro`` is done (bounded by ``timeout``)."""
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            last = f" (last error: {self._last_error})" if self._last_error else ""
            raise ChannelError(
                f"nats at {redact(self.config.address)} did not answer in {timeout:g} s{last}"
            ) from None

    def _close_loop(self) -> None:
        """Close the loop with nothing left on it: what a failed connect or an outage left
        running is cancelled and waited for (bounded), and every failed future's exception is
        taken, so that asyncio reports no "Task was destroyed but it is pending!" or "Future
        exception was never retrieved" at exit."""
        loop = self._loop
        for p in self._pending:
            if p.ack.done() and not p.ack.cancelled():
                p.ack.exception()
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in left:
            task.cancel()
        if left:
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait(left, timeout=1.0))
        for task in left:
            if task.done() and not task.cancelled():
                task.exception()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    # -- connection and stream -----------------------------------------------------------------

    async def _connect(self) -> None:
        cfg = self.config
        own = options(cfg, NatsOptions)
        kwargs: dict[str, Any] = {}
        if own.creds_file:  # checked again: the file may have changed since the settings
            kwargs["user_credentials"] = RawCredentials(read_creds(own.creds_file, ChannelError))
        if own.token:
            kwargs["token"] = own.token
        if own.user:
            kwargs["user"] = own.user
            kwargs["password"] = own.password
        attempts = max(1, int(cfg.retry_seconds / 0.25))
        # nats-py retries a refused login like an unreachable server (10 s and more): a refusal
        # reported through error_cb ends the attempt at once instead
        self._refusal = self._loop.create_future()
        try:
            servers = nats_servers(cfg.address, "nats address")
        except InputError as exc:  # a config made without channel_config: refused all the same
            raise ChannelError(str(exc)) from None
        connecting = asyncio.ensure_future(
            nats.connect(
                servers=servers,
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
        )
        racing: list[asyncio.Future[Any]] = [connecting, self._refusal]
        try:
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:  # refused, or out of time (cancelled): no connect attempt outlives this
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
        self._raise_refused()
        try:
            self._nc = connecting.result()
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise ChannelError(
                f"cannot connect to nats at {redact(cfg.address)}: {type(exc).__name__}: "
                f"{redact_text(str(exc))}"
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
        text = redact_text(str(exc))
        self._last_error = f"{type(exc).__name__}: {text}"[:200]
        if not any(word in text.lower() for word in _REFUSED):
            log.debug("endpoint %d: nats error: %s", self.me, text)
            return
        if not self._refused:
            log.error("endpoint %d: nats refused us: %s", self.me, text)
            self._refused = text
        if self._refusal is not None and not self._refusal.done():
            self._refusal.set_result(None)
        if self._waiter is not None:
            _wake(self._waiter)

    def _raise_refused(self) -> None:
        """Report a refused login or permission as such (not as a timeout), at the next call."""
        if self._refused:
            raise ChannelError(
                f"endpoint {self.me}: nats at {redact(self.config.address)} refused the "
                f"credentials or permissions: {self._refused}"
            )

    # INFO, not WARNING: a reconnect is routine, and an outage that lasts fails the run, which
    # says so (once, not once per endpoint)
    async def _on_disconnect(self) -> None:
        if not self._closed:
            log.info("endpoint %d: disconnected from nats; reconnecting", self.me)

    async def _on_reconnect(self) -> None:
        log.info("endpoint %d: reconnected to nats", self.me)

    # -- receiving -----------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self.stats.count("receive")
        self.stats.count("receive_units", units_64k(len(msg.data)))
        slot = self._slot(msg.subject)
        if slot is None:
            accepted = False
            self._reject(Slot(0, 0, 0, self.me, 0), msg.data, WireError("unknown subject"))
        else:
            accepted = self._deliver(slot, msg.data)
        with contextlib.suppress(nats.errors.Error):  # a lost ack only means a redelivery
            if accepted:
                await msg.ack()
                self.stats.count("ack")
            else:
                await msg.term()  # never redelivered: the genuine frame is still welcome
        if accepted and self._waiter is not None:
            _wake(self._waiter)

    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        # no timeout wrapper (a task per call, ~0.1 ms): _wait keeps its own deadline
        try:
            self._loop.run_until_complete(self._wait(deadline))
        except (nats.errors.Error, OSError) as exc:
            raise ChannelError(
                f"endpoint {self.me}: nats at {redact(self.config.address)} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._raise_refused()

    async def _wait(self, deadline: float) -> None:
        """Let frames arrive (the subscription delivers them) until collect has all it waits for."""
        while True:
            await self._check_acks()
            left = deadline - time.monotonic()
            if self._satisfied() or left <= 0 or self._refused:
                return
            waiter = self._waiter = self._loop.create_future()
            timer = self._loop.call_later(min(left, _ACK_TIMEOUT / 4), _wake, waiter)
            await waiter
            timer.cancel()

    # -- sending -------------------------------------------------------------------------------

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        # no timeout wrapper (it costs a task per call): _send never waits on the network
        try:
            self._loop.run_until_complete(self._send(frames))
        except (nats.errors.Error, OSError) as exc:
            raise ChannelError(
                f"endpoint {self.me}: cannot publish to nats at {redact(self.config.address)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._raise_refused()

    async def _send(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        await self._check_acks()
        now = time.monotonic()
        for slot, data in frames:
            s = slot
            subject = (
                f"{self._prefix}.{_endpoint_token(s.dst)}.{s.kind}.{s.layer}."
                f"{_endpoint_token(s.src)}.{s.chunk}"
            )
            msg_id = self._slot_id(slot)
            ack = await self._publish(subject, data, msg_id)
            self._pending.append(_Pending(subject, data, msg_id, ack, now, now))
        await self._push_out()

    async def _publish(self, subject: str, data: bytes, msg_id: str) -> asyncio.Future[Any]:
        assert self._js is not None
        self.stats.count("publish")
        self.stats.count("publish_units", units_64k(len(data)))
        # the server drops a re-publish of the same frame inside its duplicate window; only key
        # holders can compute the id, so nobody else can claim it before the genuine frame
        return await self._js.publish_async(
            subject, data, headers={"Nats-Msg-Id": msg_id}, wait_stall=self.config.retry_seconds
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
                    p.ack = await self._publish(p.subject, p.data, p.msg_id)
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

    @property
    def _cleanup_seconds(self) -> float:
        """How long clean-up may wait for the server: through a blip, not through an outage."""
        return min(10.0, max(2.0, self.config.retry_seconds))

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

    @property
    def _reachable(self) -> bool:
        """Connected now: clean-up that needs the server is worth waiting for only then."""
        return self._nc is not None and self._nc.is_connected

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:
        """Delete this run's frames and the consumers of ``endpoints`` (a killed worker's too).

        Not while the server is unreachable (the outage fails the run, which says so): the
        stream's ``max_age`` and the consumers' ``inactive_threshold`` remove them instead.
        """
        if not self._reachable:
            log.info("run %s not purged: nats unreachable (max_age will)", self.run.hex())
            return
        try:
            self._run(self._purge(endpoints), self._cleanup_seconds)
        except (ChannelError, nats.errors.Error) as exc:
            log.warning("could not purge run %s: %s (max_age will)", self.run.hex(), exc)

    async def _purge(self, endpoints: Sequence[int]) -> None:
        assert self._js is not None
        js = self._js
        with contextlib.suppress(ChannelError):  # our own frames (an ABORT) are stored first
            await self._drain()
        await js.purge_stream(self._stream, subject=f"{self._prefix}.>")

        async def drop(name: str) -> None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(self._stream, name)

        names = {self._consumer(e) for e in endpoints} - {self._durable}
        await asyncio.gather(*(drop(n) for n in sorted(names)))

    def close(self) -> None:
        """Wait for the sends still unacknowledged and delete this endpoint's consumer, if the
        server can be reached; if not, give up at once (the outage is the run's failure, told
        once by whoever ran it; its frames and consumer expire)."""
        if self._closed:
            return
        self._closed = True
        reachable = self._reachable
        if reachable:
            try:
                self.flush()
            except ChannelError as exc:
                log.warning("endpoint %d: closing with undelivered sends: %s", self.me, exc)
        elif self._pending:
            log.info(
                "endpoint %d: %d sends not stored: nats unreachable", self.me, len(self._pending)
            )
        try:
            if self._nc is not None:
                limit = self._cleanup_seconds if reachable else 2.0
                self._run(self._shutdown(reachable), limit)
        except ChannelError as exc:
            log.info("endpoint %d: nats shutdown: %s", self.me, exc)
        finally:
            self._close_loop()

    async def _shutdown(self, reachable: bool) -> None:
        assert self._nc is not None and self._js is not None
        if reachable:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self._js.delete_consumer(self._stream, self._durable)
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError, OSError):
            await self._nc.close()  # a connection the server reset raises here
