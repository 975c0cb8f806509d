"""Channel seam: one module per transport behind :class:`Channel`; ``open_channel`` picks one."""

from __future__ import annotations

from fsd.channels.base import (
    COORDINATOR,
    Channel,
    ChannelConfig,
    ChannelStats,
)
from fsd.errors import InputError

CHANNELS = ("local", "nats", "s3", "sqs", "sns")


def open_channel(config: ChannelConfig, run: bytes, me: int) -> Channel:
    """Connect endpoint ``me`` of ``run`` to the transport named by ``config.kind``."""
    if config.kind == "local":
        from fsd.channels.local import LocalChannel  # noqa: PLC0415

        return LocalChannel(config, run, me)
    if config.kind == "nats":
        from fsd.channels.nats import NatsChannel  # noqa: PLC0415

        return NatsChannel(config, run, me)
    if config.kind == "s3":
        from fsd.channels.s3 import S3Channel  # noqa: PLC0415

        return S3Channel(config, run, me)
    if config.kind == "sqs":
        from fsd.channels.sqs import SqsChannel  # noqa: PLC0415

        return SqsChannel(config, run, me)
    if config.kind == "sns":
        from fsd.channels.sns import SnsChannel  # noqa: PLC0415

        return SnsChannel(config, run, me)
    raise InputError(f"unknown channel {config.kind!r}; choose one of {', '.join(CHANNELS)}")


__all__ = [
    "CHANNELS",
    "COORDINATOR",
    "Channel",
    "ChannelConfig",
    "ChannelStats",
    "open_channel",
]
