"""An embedded moto server standing in for SQS and SNS: locked, it takes only requests signed
with its per-start keys, which the config carries."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fsd.channels.aws import AwsOptions
from fsd.channels.base import ChannelConfig
from fsd.services import MotoServer

log = logging.getLogger(__name__)


@contextmanager
def moto_server(config: ChannelConfig) -> Iterator[ChannelConfig]:
    """``config`` pointing at a moto_server that lasts as long as the context."""
    log.info("no AWS endpoint or credentials configured: starting an embedded moto_server")
    with MotoServer() as moto:
        yield dataclasses.replace(
            config,
            address=moto.endpoint,
            options=AwsOptions(
                region=moto.region, access_key=moto.access_key, secret_key=moto.secret_key
            ),
        )
