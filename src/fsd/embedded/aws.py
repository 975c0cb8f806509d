"""An embedded moto server (:class:`MotoServer`) standing in for SQS and SNS, and the transports'
way to start one (:func:`moto_server`): locked, it takes only requests signed with its per-start
keys, which the config carries."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3

from fsd.channels.aws import AwsOptions
from fsd.channels.base import ChannelConfig
from fsd.embedded import moto_locked
from fsd.errors import ServiceError
from fsd.services import HOST, Server, pick_ports
from fsd.settings import REGION

log = logging.getLogger(__name__)


class MotoServer(Server):
    """moto: Amazon SQS, SNS, S3 (and the rest of moto) emulated on one loopback port.

    Locked: moto itself checks no signatures and serves ``/moto-api`` (a dump of every queue,
    message and object; a reset that wipes them) to anyone, so it runs behind
    :mod:`fsd.embedded.moto_locked`, a gate that passes on only requests signed (SigV4) with this
    server's key pair (:attr:`access_key`, :attr:`secret_key`: random per server, kept across
    restart(), handed to the child in its environment, never on its command line) and refuses
    ``/moto-api`` to everyone. It listens on 127.0.0.1 only, keeps nothing on disk and dies
    with its owner. Readiness is probed like a client: a signed SQS ListQueues.

    ``moto_server`` (installed with ``moto[server]``) only marks moto as installed: the child
    is this interpreter running :mod:`fsd.embedded.moto_locked`.
    """

    binary = "moto_server"
    package = "moto[server]"
    prefix = "fsd-moto-"
    region = REGION

    def __init__(
        self,
        workdir: str | None = None,
        *,
        port: int | None = None,
        access_key: str = "",
        secret_key: str = "",
    ) -> None:
        # a fresh random pair unless one is given (two servers standing in for two services
        # of one AWS account take the same keys)
        if bool(access_key) != bool(secret_key):
            raise ServiceError("MotoServer takes both access_key and secret_key, or neither")
        super().__init__(workdir)
        if port is None:
            (port,) = pick_ports(1)
        self.port = port
        self.endpoint = f"http://{HOST}:{port}"
        self.access_key = access_key or "fsd" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)

    def __repr__(self) -> str:  # no secrets here: repr ends up in logs
        return f"MotoServer({self.endpoint})"

    def _command(self, binary: str) -> list[str]:
        return [sys.executable, "-m", moto_locked.__name__, str(self.port)]

    def _env(self) -> dict[str, str]:
        # moto reads its own MOTO_* settings from the environment: none of ours may change it
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MOTO_")}
        # the child imports fsd from where we did, whatever its working directory
        package_root = str(Path(__file__).resolve().parents[2])
        path = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        env[moto_locked.ACCESS_KEY_VAR] = self.access_key
        env[moto_locked.SECRET_KEY_VAR] = self.secret_key
        return env

    def _probe(self) -> bool:
        from botocore.auth import SigV4Auth  # noqa: PLC0415 (only once a server starts)
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415
        from botocore.credentials import Credentials  # noqa: PLC0415

        url, body = f"{self.endpoint}/", b"Action=ListQueues&Version=2012-11-05"
        form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        request = AWSRequest("POST", url, data=body, headers=form)
        keys = Credentials(self.access_key, self.secret_key)
        SigV4Auth(keys, "sqs", self.region).add_auth(request)
        http = urllib3.PoolManager(timeout=urllib3.Timeout(1.0), retries=urllib3.Retry(total=0))
        try:
            answer = http.request("POST", url, body=body, headers=dict(request.headers.items()))
        except urllib3.exceptions.HTTPError as exc:
            self._last_probe_error = f"{type(exc).__name__}: {exc}"
            return False
        if answer.status != 200:
            self._last_probe_error = f"HTTP {answer.status}"
            return False
        return True


SERVER = MotoServer
"""What this module's starters run (:func:`fsd.services.require` checks it is installed)."""


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
