"""An embedded nats-server with JetStream, signed in to with its per-start token."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fsd.channels.base import ChannelConfig
from fsd.channels.nats import NatsOptions
from fsd.services import NatsServer

log = logging.getLogger(__name__)


@contextmanager
def nats_server(config: ChannelConfig) -> Iterator[ChannelConfig]:
    """``config`` pointing at a nats-server that lasts as long as the context."""
    log.info("no NATS URL configured: starting an embedded nats-server")
    with NatsServer() as server:
        yield dataclasses.replace(
            config, address=server.url, options=NatsOptions(token=server.token)
        )
