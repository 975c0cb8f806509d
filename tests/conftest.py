"""Session fixtures: the real Graph Challenge data from ../shared (skipped, with the reason, if
absent) and one of each real server (NATS, SeaweedFS S3, moto), started once for the whole run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

from fsd.embedded.aws import MotoServer
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.model import Images, Network, load_images, load_network
from paths import SHARED


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "neuron1024").is_dir():
        pytest.skip(f"real Graph Challenge data not found at {SHARED} (../shared is absent)")
    return SHARED


@pytest.fixture(scope="session")
def shared_net(shared_dir: Path) -> Network:
    return load_network(shared_dir)


@pytest.fixture(scope="session")
def shared_images(shared_dir: Path) -> Images:
    return load_images(shared_dir, 1024)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One real nats-server (JetStream on file storage) shared by the whole session."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One real SeaweedFS S3 server (bucket ``fsd`` ready) shared by the whole session."""
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One real moto server (SQS, SNS, S3; AWS's 1 MiB limits and filter policies) for the
    session; locked: clients sign with its ``access_key``/``secret_key``."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def servers_env(nats_server: NatsServer, s3_server: S3Server) -> Mapping[str, str]:
    """The session's NATS and S3 servers as a function, the CLI or a stack reads them from its
    environment (read-only: copy it, ``{**servers_env, "FSD_MODELS": ...}``)."""
    return MappingProxyType(
        {
            "FSD_NATS_URL": nats_server.url,
            "FSD_NATS_TOKEN": nats_server.token,
            "FSD_S3_ENDPOINT": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        }
    )
