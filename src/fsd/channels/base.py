"""The Channel seam: how one endpoint of a run sends and receives wire messages.

A transport implements :class:`Channel`: ``send`` one message, ``collect`` the messages of one
(kind, layer) from known sources. Receivers always know from the plan whom they wait for, so a
transport can fetch exactly those (object stores) or filter a stream (pub-sub). Every transport
must deliver each message once, keep runs apart, and keep messages sent before the receiver
started; the shared conformance suite (tests/test_channel_conformance.py) checks it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field

from fsd import wire
from fsd.errors import ChannelTimeout, InputError

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


@dataclass(frozen=True)
class ChannelConfig:
    """Where and how to reach a transport; plain data so it can travel to workers.

    Secrets are kept out of ``repr`` so a logged config never shows them.
    """

    kind: str = "local"
    address: str = ""  # local: mailbox root folder; nats: server URL(s); s3: endpoint URL
    max_frame: int = 4 * 1024 * 1024  # frames above this are chunked
    connect_timeout: float = 10.0
    compress: bool = True  # zstd when it pays (fsd.wire)
    retry_seconds: float = 30.0  # how long a send keeps retrying through an outage
    namespace: str = "fsd"  # nats: subject prefix and stream name; s3: key prefix
    ttl_seconds: float = 3600.0  # abandoned runs' messages and consumers expire after this
    bucket: str = "fsd"  # s3
    region: str = "us-east-1"  # s3
    access_key: str = field(default="", repr=False)  # s3
    secret_key: str = field(default="", repr=False)  # s3
    creds_file: str = ""  # nats: a .creds file (JWT + NKey seed)
    token: str = field(default="", repr=False)  # nats
    user: str = field(default="", repr=False)  # nats
    password: str = field(default="", repr=False)  # nats
    # the deployment secret frames are authenticated with (fsd.auth); never sent anywhere
    secret: bytes = field(default=b"", repr=False)


#: Transport operations counted per endpoint, in the fixed order a worker reports them.
OPS = (
    "publish",  # nats: frames published
    "publish_units",  # nats: the same in 64 KiB units (how SNS and SQS bill payloads)
    "receive",  # nats: frames delivered to this endpoint
    "receive_units",
    "ack",  # nats: acknowledgements sent
    "put",  # s3: PUT requests
    "get",  # s3: GETs that found their object
    "get_miss",  # s3: GETs that did not (yet): billed all the same
    "list",  # s3
    "delete",  # s3: objects deleted (free on AWS)
)


@dataclass
class ChannelStats:
    messages: int = 0  # frames put on the transport (chunks count one each)
    bytes: int = 0
    requests: int = 0  # transport operations billed by a cloud (publish, put, get, ...)
    ops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))

    def count(self, op: str, n: int = 1) -> None:
        self.ops[op] += n
        if op not in ("publish_units", "receive_units", "delete"):
            self.requests += n


class Channel(ABC):
    """One endpoint (worker or coordinator) of one run."""

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        self.config = config
        self.run = run
        self.me = me
        self.stats = ChannelStats()

    @abstractmethod
    def send(self, msg: wire.Message) -> int:
        """Deliver ``msg`` to ``msg.header.dst``; returns the bytes put on the transport."""

    @abstractmethod
    def collect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        """Messages of ``kind``/``layer`` from ``sources`` that arrive within ``timeout`` seconds.

        Returns as soon as all are there; otherwise whatever arrived (possibly nothing).
        """

    def expect(
        self, kind: wire.Kind, layer: int, sources: Iterable[int], timeout: float
    ) -> dict[int, wire.Message]:
        """Like :meth:`collect` but every source must answer, else :class:`ChannelTimeout`."""
        wanted = list(sources)
        got = self.collect(kind, layer, wanted, timeout)
        missing = [s for s in wanted if s not in got]
        if missing:
            raise ChannelTimeout(
                f"endpoint {self.me}: no {kind.name} for layer {layer} from {missing} "
                f"after {timeout:g} s",
                missing,
            )
        return got

    def purge_run(self) -> None:  # noqa: B027 (an optional hook)
        """Remove whatever is left of this run on the transport (the coordinator calls it)."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections. Idempotent."""

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
