"""The Channel seam: how one endpoint of a run sends and receives wire messages.

Everything that is the same on every transport lives here, once: framing (encode, chunk, seal
each frame with the run's MAC key), and on receipt the checks in this order: the MAC, then the
header against where the frame was found (run, kind, layer, src, dst, chunk), then dedupe and
reassembly. A frame that fails is dropped and counted (``stats.rejected``); it never takes the
place of the genuine one, which is still accepted when it comes. A transport only moves bytes
between *slots* (:class:`Slot`: a subject, an object key, a mailbox file): :meth:`Channel._transmit`
puts sealed frames into their slots, :meth:`Channel._poll` brings frames in and hands each to
:meth:`Channel._deliver`. Receivers always know from the plan whom they wait for, so a transport
can fetch exactly those slots (object stores, mailboxes) or filter a stream (pub-sub).

Every transport must deliver each message once, keep runs apart, and keep messages sent before the
receiver started; the shared conformance suite (tests/channels/test_channel_conformance.py)
checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from fsd import auth, settings, wire
from fsd.errors import ChannelError, ChannelTimeout, InputError, RunAborted, WireError
from fsd.settings import Variable

log = logging.getLogger(__name__)


CHUNK_BYTES = 64 * 1024
"""SNS and SQS bill each request per 64 KB chunk of its payload."""


def units_64k(nbytes: int) -> int:
    """Billed 64 KB chunks of one message: an empty message is still one request."""
    if nbytes < 0:
        raise InputError(f"message size must be >= 0 bytes, got {nbytes}")
    return max(1, -(-nbytes // CHUNK_BYTES))


#: The coordinator's endpoint id; workers are 0..W-1.
COORDINATOR = -1
MAX_ENDPOINTS = 1 << 16
"""Worker ids are below this (far above any worker count a deployment allows)."""
MIN_FRAME = 4096
MAX_FRAME = 64 * 1024 * 1024
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_REJECTIONS_LOGGED = 20  # per endpoint; later ones are counted and logged at debug level
_ABORT_AFTER = 1.0  # a worker waiting this long also looks for the coordinator's ABORT


def _check_seconds(name: str, value: float, lo: float, hi: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and lo <= value <= hi):
        raise InputError(f"{name} must be a finite number of seconds in [{lo:g}, {hi:g}]")


Billing = Mapping[str, tuple[tuple[str, float], ...]]
"""Counted operation -> ``(billed item, how many per operation)``: a transport's ``BILLING``,
priced by :func:`fsd.cost.estimate` (data here, so no transport imports the cost model)."""
Rates = Mapping[str, float]
"""Billed item -> its unit price in USD: a backend's ``PRICES``, gathered by
:func:`fsd.cost.declared_prices` (each item priced by exactly one backend)."""


@dataclass(frozen=True)
class TransportOptions:
    """What one transport alone needs (its credentials, its bucket...): each transport declares
    a subclass (:attr:`Channel.OPTIONS`), with the variables it reads (:attr:`VARIABLES`: its
    CLI flags, its secrets and docs/configuration.md follow from them). This base is "none
    given": a transport then takes its own defaults (:func:`options`).

    Secrets are kept out of ``repr`` (``field(repr=False)``) and out of every invocation body.
    """

    VARIABLES: ClassVar[tuple[Variable, ...]] = ()
    """Every variable this transport reads, the address first when it has one."""
    ADDRESS: ClassVar[str] = ""
    """The variable that names the transport's server (``FSD_NATS_URL``), for :meth:`to_env`."""
    CLUSTER: ClassVar[tuple[Variable, ...]] = ()
    """What the operator reads (:meth:`cluster_env`) when a stack runs this transport's server
    (:attr:`Channel.STACK`): where the functions reach it."""
    CLUSTER_SECRETS: ClassVar[tuple[str, ...]] = ()
    """The secret files (of :attr:`VARIABLES`) the operator's functions mount by default
    (its ``FSD_FUNCTION_SECRETS``)."""

    @classmethod
    def cluster_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        """The variables the operator gives its functions for this transport's server, read
        from the operator's ``env`` (:attr:`CLUSTER`)."""
        return {}

    @classmethod
    def flags(cls) -> tuple[Variable, ...]:
        """The variables a CLI flag may set (the flag wins)."""
        return tuple(v for v in cls.VARIABLES if v.flag)

    def to_env(self) -> dict[str, str]:
        """The variables (no secrets) that make a deployment read these options back."""
        return {}

    def secret_env(self) -> dict[str, str]:
        """The secret variables that complete :meth:`to_env`: only for a child process on this
        machine that must reach the same server (a local stack's functions); never logged,
        never written to a deployment."""
        return {}


OptionsT = TypeVar("OptionsT", bound=TransportOptions)


def options(config: ChannelConfig, cls: type[OptionsT]) -> OptionsT:
    """``config.options`` as the transport's own ``cls``; its defaults when none were given."""
    given = config.options
    if isinstance(given, cls):
        return given
    if type(given) is TransportOptions:
        return cls()
    raise ChannelError(f"{config.kind}: {type(given).__name__} are not {cls.__name__}")


@dataclass(frozen=True)
class ChannelConfig:
    """Where and how to reach a transport; plain data, checked on construction.

    What every transport shares is here; what one transport alone needs is its ``options``
    (:class:`TransportOptions`). Secrets are kept out of ``repr`` so a logged config never shows
    them, and out of every invocation body (:meth:`fsd.task.WorkerTask.to_json`).
    """

    kind: str = "local"
    address: str = ""  # where: a mailbox folder, a server URL, an endpoint ("": not configured)
    max_frame: int = 4 * 1024 * 1024  # frames above this are chunked
    connect_timeout: float = 10.0
    compress: bool = True  # zstd when it pays (fsd.wire)
    retry_seconds: float = 30.0  # how long a send keeps retrying through an outage
    namespace: str = settings.PREFIX  # a subject prefix, a key prefix, a queue-name prefix
    ttl_seconds: float = 3600.0  # abandoned runs' messages and consumers expire after this
    # the deployment secret frames are authenticated with (fsd.auth); never sent anywhere
    secret: bytes = field(default=b"", repr=False)
    # a coordinator endpoint removes what runs that ended without cleaning up left (sqs, sns:
    # it lists the deployment's queues, which a function's role may not: functions turn it off)
    reap: bool = True
    options: TransportOptions = field(default_factory=TransportOptions)

    def to_env(self) -> dict[str, str]:
        """The variables (no secrets) a deployment reads this configuration back from."""
        where = type(self.options).ADDRESS
        return ({where: self.address} if where and self.address else {}) | self.options.to_env()

    def secret_env(self) -> dict[str, str]:
        """The secret variables that complete :meth:`to_env` (see
        :meth:`TransportOptions.secret_env`)."""
        return self.options.secret_env()

    def __post_init__(self) -> None:
        frame = self.max_frame
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise InputError("max_frame must be an integer number of bytes")
        if not MIN_FRAME <= frame <= MAX_FRAME:
            raise InputError(f"max_frame must be in [{MIN_FRAME}, {MAX_FRAME}] bytes")
        _check_seconds("connect_timeout", self.connect_timeout, 0.1, 600)
        _check_seconds("retry_seconds", self.retry_seconds, 0, 3600)
        _check_seconds("ttl_seconds", self.ttl_seconds, 1, 7 * 86400)
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            raise InputError(
                f"namespace {self.namespace!r} must be 1-32 of a-z, 0-9, '_' and '-' "
                "(it names a transport's streams, queues or key prefixes)"
            )


@dataclass(frozen=True)
class Slot:
    """Where one frame lives on a transport: a receiver can name it before it exists."""

    kind: int
    layer: int
    src: int
    dst: int
    chunk: int


_Key = tuple[int, int, int]  # kind, layer, src: one message to this endpoint


@dataclass
class ChannelStats:
    """What one endpoint put on its transport, and the operations it counted (by name: each
    transport declares its own in :attr:`Channel.OPS`)."""

    messages: int = 0  # frames put on the transport (chunks count one each)
    bytes: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    rejected: int = 0  # frames dropped: bad MAC, not where they were found, malformed

    def count(self, op: str, n: int = 1) -> None:
        self.ops[op] += n


class Channel(ABC):
    """One endpoint (worker or coordinator) of one run.

    A transport subclass implements :meth:`_transmit` and :meth:`_poll` (and may lower
    ``self.frame_limit`` to its own payload limit); everything else happens here. What the rest
    of fsd needs to know about a transport is declared on its class, so that adding one is its
    module plus one entry in :data:`fsd.channels.TRANSPORTS`: the operations it counts and how a
    cloud bills them, how it reads its settings, and the embedded server it can start.
    """

    OPS: ClassVar[tuple[str, ...]] = ()
    """The operations this transport counts (``stats.ops``); workers report them by name."""
    BILLING: ClassVar[Billing] = {}
    """How its cloud counterpart bills each counted operation (:func:`fsd.cost.estimate`)."""
    PRICES: ClassVar[Rates] = {}
    """The list price of each item it bills as its own (an item another backend prices, as
    NATS bills SNS's and SQS's, is left to that backend)."""
    LOGGERS: ClassVar[tuple[str, ...]] = ()
    """Its client library's loggers: quieter than fsd's own in the CLI (their DEBUG prints
    request headers and retries)."""
    EXAMPLE: ClassVar[str] = ""
    """A command line of ``fsd run --help``'s examples that runs on it, or none."""
    SERVER: ClassVar[str] = ""
    """What names its server, for messages: the flag or variable a user sets."""
    OPTIONS: ClassVar[type[TransportOptions]] = TransportOptions
    """Its own options: what ``config.options`` holds for it, and the variables it reads."""
    EMBEDDED: ClassVar[str] = ""
    """``module:function`` of the server it can start on this machine (a context manager
    taking and yielding a ChannelConfig), outside the runtime's imports: the ``embedded``
    extra's :mod:`fsd.embedded`. Empty: none (:func:`fsd.channels.resolve` refuses)."""
    STACK: ClassVar[bool] = False
    """Whether the one-machine stack (:mod:`fsd.localstack`) serves it unless ``FSD_CHANNELS``
    says otherwise (and starts its server there unless one is configured)."""

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        """``config`` completed from ``flags`` (they win) and ``env``, every address checked
        before any connection; :class:`InputError` names the setting at fault."""
        return config

    @classmethod
    def has_server(cls, config: ChannelConfig) -> bool:
        """Whether ``config`` reaches a server (else: start :attr:`EMBEDDED`, or refuse);
        whatever the environment said about it is in ``config`` already."""
        return bool(config.address)

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        if not isinstance(run, bytes) or len(run) != wire.RUN_ID_BYTES:
            raise ChannelError(f"a run id is {wire.RUN_ID_BYTES} bytes")
        if not COORDINATOR <= me < MAX_ENDPOINTS:
            raise ChannelError(f"endpoint {me} is not a worker id or the coordinator")
        if not config.secret:
            raise ChannelError(
                "no secret to authenticate frames with (FSD_RUN_KEY, the fsd-run-key secret)"
            )
        self.config = config
        self.run = run
        self.me = me
        self.stats = ChannelStats(ops=dict.fromkeys(self.OPS, 0))
        self.frame_limit = config.max_frame  # a transport may lower it (e.g. a payload limit)
        self._frame_key = auth.frame_key(config.secret, run)
        self._assembler = wire.Reassembler(max_message_bytes=wire.MAX_BODY)
        self._ready: dict[_Key, wire.Message] = {}  # complete, verified, not yet collected
        self._delivered: set[_Key] = set()  # handed to the caller: later copies are duplicates
        self._chunks: dict[_Key, tuple[int, set[int]]] = {}  # partial: nchunks, chunks held
        self._waiting: list[_Key] = []  # what the current collect waits for (see _satisfied)
        self._rejected_seen: OrderedDict[tuple[Slot, bytes], None] = OrderedDict()

    # -- what a transport implements -----------------------------------------------------------

    @abstractmethod
    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        """Put each sealed frame into its slot (it may return before they are stored)."""

    @abstractmethod
    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        """Bring frames in and hand each to :meth:`_deliver`, until :meth:`_satisfied`, until
        something was accepted (so the caller can ask for the rest of a chunked message), or
        until ``deadline`` (``time.monotonic()``). Pull transports fetch ``wanted``; push
        transports deliver whatever arrives and may ignore it."""

    # -- sending -------------------------------------------------------------------------------

    def send(self, msg: wire.Message) -> int:
        """Deliver ``msg`` to ``msg.header.dst``; returns the bytes put on the transport."""
        h = msg.header
        if h.run != self.run:
            raise ChannelError(f"endpoint {self.me}: a message of another run cannot be sent here")
        frame = wire.encode(msg, compress=self.config.compress)
        pieces = wire.split(frame, self.frame_limit - wire.TAG_SIZE)
        frames = [
            (Slot(int(h.kind), h.layer, h.src, h.dst, i), wire.seal(piece, self._frame_key))
            for i, piece in enumerate(pieces)
        ]
        self._transmit(frames)
        total = sum(len(data) for _, data in frames)
        self.stats.messages += len(frames)
        self.stats.bytes += total
        return total

    def _slot_id(self, slot: Slot) -> str:
        """A name for what belongs in ``slot`` that only holders of the run key can compute
        (a transport's dedupe id: a stranger can't claim it before the genuine frame)."""
        s = slot
        text = f"{s.kind}.{s.layer}.{s.src}.{s.dst}.{s.chunk}".encode()
        return hmac.digest(self._frame_key, b"slot:" + text, "sha256")[:12].hex()

    # -- receiving -----------------------------------------------------------------------------

    def collect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        """Messages of ``kind``/``layer`` from ``sources`` that arrive within ``timeout`` seconds.

        Returns as soon as all are there; otherwise whatever arrived (possibly nothing). A
        message already collected once is not returned again.
        """
        keys = [(int(kind), layer, src) for src in sources]
        got: dict[int, wire.Message] = {}
        start = time.monotonic()
        deadline = start + timeout
        abort = (int(wire.Kind.ABORT), 0, COORDINATOR)
        while True:
            if abort in self._ready and int(kind) != abort[0]:
                raise RunAborted(f"endpoint {self.me}: the coordinator aborted the run")
            for key in keys:
                msg = self._ready.pop(key, None)
                if msg is not None:
                    self._delivered.add(key)
                    got[key[2]] = msg
            keys = [k for k in keys if k[2] not in got and k not in self._delivered]
            if not keys or time.monotonic() >= deadline:
                return got
            self._waiting = keys
            wanted = self._wanted(keys)
            if self.me != COORDINATOR and time.monotonic() - start > _ABORT_AFTER:
                wanted.append(Slot(*abort[:2], COORDINATOR, self.me, 0))
            try:
                self._poll(wanted, deadline)
            finally:
                self._waiting = []

    def expect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        """Like :meth:`collect` but every source must answer, else :class:`ChannelTimeout`."""
        wanted = list(sources)
        got = self.collect(kind, layer, wanted, timeout)
        missing = [s for s in wanted if s not in got]
        if missing:
            rejected = f" ({self.stats.rejected} frames rejected)" if self.stats.rejected else ""
            raise ChannelTimeout(
                f"endpoint {self.me}: no {kind.name} for layer {layer} from {missing} "
                f"after {timeout:g} s{rejected}",
                missing,
            )
        return got

    def _wanted(self, keys: Sequence[_Key]) -> list[Slot]:
        """The slots still missing for ``keys``: chunk 0, or the rest once chunk 0 said how many."""
        slots = []
        for kind, layer, src in keys:
            partial = self._chunks.get((kind, layer, src))
            if partial is None:
                slots.append(Slot(kind, layer, src, self.me, 0))
            else:
                n, held = partial
                slots += [Slot(kind, layer, src, self.me, c) for c in range(n) if c not in held]
        return slots

    def _satisfied(self) -> bool:
        """Whether :meth:`collect` can return: all it waits for is complete, or it is aborted."""
        ready = self._ready
        return all(k in ready for k in self._waiting) or (
            (int(wire.Kind.ABORT), 0, COORDINATOR) in ready
        )

    def _deliver(self, slot: Slot, data: bytes | bytearray | memoryview) -> bool:
        """Check one received frame and keep it; False (and counted) when it is rejected.

        The MAC is verified before anything else reads the bytes; then the header must say what
        the slot promised, for this run and this endpoint. Copies of what was already received
        are accepted and ignored.
        """
        try:
            frame = wire.unseal(data, self._frame_key)
            h = wire.peek_header(frame)
            found = (h.run, int(h.kind), h.layer, h.src, h.dst, h.chunk)
            promised = (self.run, slot.kind, slot.layer, slot.src, slot.dst, slot.chunk)
            if found != promised or slot.dst != self.me:
                raise WireError("the frame's header does not match where it was found")
            key = (slot.kind, slot.layer, slot.src)
            if key in self._delivered or key in self._ready:
                return True
            partial = self._chunks.get(key)
            if partial is not None and partial[0] != h.nchunks:
                raise WireError(f"chunk count {h.nchunks} differs from the {partial[0]} seen")
            msg = self._assembler.add(frame)
        except WireError as exc:
            self._reject(slot, data, exc)
            return False
        if msg is not None:
            self._chunks.pop(key, None)
            self._ready[key] = msg
        elif h.nchunks > 1:
            self._chunks.setdefault(key, (h.nchunks, set()))[1].add(h.chunk)
        return True

    def _reject(self, slot: Slot, data: bytes | bytearray | memoryview, why: WireError) -> None:
        """Count a dropped frame once, however often a transport shows it to us again."""
        seen = (slot, hashlib.blake2b(data, digest_size=16).digest())
        if seen in self._rejected_seen:
            return
        self._rejected_seen[seen] = None
        while len(self._rejected_seen) > 4096:
            self._rejected_seen.popitem(last=False)
        self.stats.rejected += 1
        level = logging.WARNING if self.stats.rejected <= _REJECTIONS_LOGGED else logging.DEBUG
        log.log(level, "endpoint %d rejected a frame at %s: %s", self.me, slot, why)

    # -- optional hooks ------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:  # noqa: B027 (an optional hook)
        """Wait until every send so far is stored by the transport (or raise why not)."""

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:  # noqa: B027 (an optional hook)
        """Remove whatever is left of this run on the transport, including what ``endpoints``
        left behind (the coordinator calls it on every exit path)."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections. Idempotent."""

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
