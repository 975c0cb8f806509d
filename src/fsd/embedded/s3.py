"""An embedded SeaweedFS S3 server, signed in to with its per-start keys."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fsd.channels.base import ChannelConfig
from fsd.channels.s3 import S3Options
from fsd.services import S3Server

log = logging.getLogger(__name__)


@contextmanager
def s3_server(config: ChannelConfig) -> Iterator[ChannelConfig]:
    """``config`` pointing at a SeaweedFS S3 server that lasts as long as the context."""
    log.info("no S3 endpoint configured: starting an embedded SeaweedFS S3 server")
    with S3Server() as server:
        yield dataclasses.replace(
            config,
            address=server.endpoint,
            options=S3Options(
                bucket=server.bucket,
                region=server.region,
                access_key=server.access_key,
                secret_key=server.secret_key,
            ),
        )
