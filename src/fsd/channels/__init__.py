"""Channel seam: one module per transport behind :class:`Channel`, found by name in one registry.

A transport is its module plus one line in :data:`TRANSPORTS`: its class declares everything
else fsd needs (settings, embedded server, counted operations and their billing; see
:class:`fsd.channels.base.Channel`), so the CLI's choices, the functions' request schemas, the
coordinator, the cost model and the conformance suite all follow from this table.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from fsd.channels.base import (
    COORDINATOR,
    Channel,
    ChannelConfig,
    ChannelStats,
)
from fsd.errors import InputError

TRANSPORTS: Mapping[str, str] = {
    "local": "fsd.channels.local:LocalChannel",
    "nats": "fsd.channels.nats:NatsChannel",
    "s3": "fsd.channels.s3:S3Channel",
    "sqs": "fsd.channels.sqs:SqsChannel",
    "sns": "fsd.channels.sns:SnsChannel",
}
"""Channel name -> ``module:class``, imported only when that channel is used (each transport's
client library loads with it)."""

CHANNELS = tuple(TRANSPORTS)
REMOTE_CHANNELS = tuple(k for k in CHANNELS if k != "local")
"""What functions may use: every transport but ``local`` (one machine's mailbox folders)."""


def transport(kind: str) -> type[Channel]:
    """The Channel class of ``kind``; :class:`InputError` for a name not in the registry."""
    if kind not in TRANSPORTS:
        raise InputError(f"unknown channel {kind!r}; choose one of {', '.join(CHANNELS)}")
    module, _, name = TRANSPORTS[kind].partition(":")
    cls: type[Channel] = getattr(importlib.import_module(module), name)
    return cls


def open_channel(config: ChannelConfig, run: bytes, me: int) -> Channel:
    """Connect endpoint ``me`` of ``run`` to the transport named by ``config.kind``."""
    return transport(config.kind)(config, run, me)


__all__ = [
    "CHANNELS",
    "COORDINATOR",
    "REMOTE_CHANNELS",
    "TRANSPORTS",
    "Channel",
    "ChannelConfig",
    "ChannelStats",
    "open_channel",
    "transport",
]
