"""What only the networked transports have: credentials, clean-up, configuration, the CLI."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import boto3
import nats
import nkeys  # type: ignore[import-untyped]
import numpy as np
import pytest
from nats.aio.client import Client

import fsd.worker
from fsd import auth, cli, reference, wire
from fsd.channels import COORDINATOR, ChannelConfig, open_channel, transport
from fsd.channels.aws import AWS_CREDENTIAL_VARS, AwsOptions
from fsd.channels.base import options
from fsd.channels.nats import MAX_CREDS_BYTES, NatsOptions
from fsd.channels.s3 import S3Options
from fsd.channels.settings import channel_config
from fsd.channels.sns import SnsChannel
from fsd.channels.sqs import SqsChannel
from fsd.coordinator import RunConfig, run
from fsd.cost import estimate
from fsd.embedded.aws import MotoServer
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.errors import ChannelError, InputError, WorkerError
from fsd.localstack import ROOT
from fsd.model import Images, Network
from fsd.model.generate import generate
from fsd.redact import redact
from fsd.store import ModelStore, StoreConfig
from listeners import Recorder

SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]
KEY = auth.new_secret()


def _ping(config: ChannelConfig) -> None:
    run_id = uuid.uuid4().bytes
    with open_channel(config, run_id, 0) as a, open_channel(config, run_id, 1) as b:
        msg = wire.Message(
            wire.Header(wire.Kind.ACT, run_id, 1, 0, 1), [np.arange(5, dtype=np.uint32)]
        )
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 1, [0], timeout=5)[0] == msg


def test_nats_user_password_and_token_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with NatsServer(user="fsd", password=SECRET) as server:
        _ping(
            ChannelConfig(
                "nats", server.url, secret=KEY, options=NatsOptions(user="fsd", password=SECRET)
            )
        )
        embedded = server.url.replace("nats://", f"nats://fsd:{SECRET}@")
        _ping(ChannelConfig("nats", embedded, secret=KEY))
        with pytest.raises(ChannelError) as info:
            open_channel(
                ChannelConfig(
                    "nats", embedded.replace(SECRET, "wrong"), retry_seconds=1, secret=KEY
                ),
                b"r" * 16,
                0,
            )
        assert "wrong" not in str(info.value)
        assert "***@" in str(info.value)
    with NatsServer(token=SECRET) as server:
        _ping(ChannelConfig("nats", server.url, secret=KEY, options=NatsOptions(token=SECRET)))
        with pytest.raises(ChannelError):
            open_channel(
                ChannelConfig("nats", server.url, retry_seconds=1, secret=KEY), b"r" * 16, 0
            )
    assert SECRET not in caplog.text
    assert SECRET not in repr(
        ChannelConfig("nats", "x", options=NatsOptions(password=SECRET, token=SECRET))
    )


def test_redact_hides_credentials_in_every_url() -> None:
    assert redact("nats://a:b@h:4222,nats://t@h2") == "nats://***@h:4222,nats://***@h2"
    assert redact("nats://h:4222") == "nats://h:4222"


def test_s3_wrong_keys_fail_fast_and_clearly(s3_server: S3Server) -> None:
    config = ChannelConfig(
        "s3",
        s3_server.endpoint,
        secret=KEY,
        options=S3Options(access_key=s3_server.access_key, secret_key=SECRET),
    )
    with pytest.raises(ChannelError, match="check the keys") as info:
        open_channel(config, uuid.uuid4().bytes, 0)
    assert SECRET not in str(info.value)


def test_unreachable_servers_give_a_clear_error_in_bounded_time() -> None:
    unreachable = (("nats", "nats://127.0.0.1:1"), ("s3", "http://127.0.0.1:1"))
    for kind, address in (*unreachable, ("sqs", "http://127.0.0.1:1")):
        config = ChannelConfig(kind, address, connect_timeout=1, retry_seconds=1, secret=KEY)
        with pytest.raises(ChannelError, match=r"127\.0\.0\.1:1"):
            open_channel(config, uuid.uuid4().bytes, 0)


def test_nothing_is_left_behind_after_runs(
    s3_server: S3Server, shared_net: Network, shared_images: Images
) -> None:
    images = shared_images.matrix[:200]
    nats_server = NatsServer().start()  # its own, so other tests' traffic cannot interfere
    nats_cfg = ChannelConfig("nats", nats_server.url, options=NatsOptions(token=nats_server.token))
    s3_cfg = ChannelConfig(
        "s3",
        s3_server.endpoint,
        namespace="leftovers",
        options=S3Options(access_key=s3_server.access_key, secret_key=s3_server.secret_key),
    )
    for cfg in (nats_cfg, s3_cfg):
        run(shared_net, images, RunConfig(workers=3, channel=cfg.kind, channel_config=cfg))

    async def consumers_and_messages() -> tuple[list[str], int]:
        nc = await nats.connect(nats_server.url, token=nats_server.token)
        js = nc.jetstream()
        names = [c.name for c in await js.consumers_info("FSD")]
        info = await js.stream_info("FSD")
        await nc.close()
        return names, info.state.messages

    try:
        names, messages = asyncio.run(consumers_and_messages())
    finally:
        nats_server.stop()
    assert names == [] and messages == 0
    left = list(s3_server.client().list_objects("fsd", "leftovers/", recursive=True))
    assert left == []


def test_settings_from_flags_and_environment(tmp_path: Path) -> None:
    env = {
        "FSD_NATS_URL": "nats://envhost:4222",
        "FSD_NATS_TOKEN": "tok",
        "FSD_S3_ENDPOINT": "http://minio:9000",
        "FSD_S3_BUCKET": "acts",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_REGION": "eu-west-1",
    }
    cfg = channel_config("nats", env=env)
    assert (cfg.address, options(cfg, NatsOptions).token) == ("nats://envhost:4222", "tok")
    flag = {"nats_url": "nats://flag:1"}
    assert channel_config("nats", flags=flag, env=env).address == "nats://flag:1"
    s3 = channel_config("s3", env=env)
    own = options(s3, S3Options)
    assert (s3.address, own.bucket, own.access_key, own.secret_key, own.region) == (
        "http://minio:9000",
        "acts",
        "AK",
        "SK",
        "eu-west-1",
    )
    other = channel_config("s3", flags={"s3_bucket": "other"}, env=env)
    assert options(other, S3Options).bucket == "other"
    assert channel_config("s3", env={}).address == ""  # none: an embedded server
    with pytest.raises(InputError, match="bucket"):
        channel_config("s3", flags={"s3_bucket": "Bad_Bucket"}, env={})
    with pytest.raises(InputError, match="creds"):
        channel_config("nats", env={"FSD_NATS_CREDS": str(tmp_path / "missing.creds")})


@pytest.mark.parametrize("channel", ["nats", "s3", "sqs", "sns"])
def test_cli_runs_on_an_embedded_server(
    channel: str,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    endpoints = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS")
    for var in ("FSD_NATS_URL", "FSD_S3_ENDPOINT", *endpoints):
        monkeypatch.delenv(var, raising=False)
    for var in AWS_CREDENTIAL_VARS:  # no endpoint, no credentials: an embedded moto_server
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    # 4 model-parallel workers (the planner would make them replicas: the model fits one); 30
    # layers of the challenge net, checked against the oracle: the embedded server is what this
    # tests (the conformance suite runs all 120 layers on each transport against the truth)
    run = ["run", "--data", str(shared_dir), "--workers", "4", "--partitions", "4"]
    code = cli.main([*run, "--layers", "30", "--images", "500", "--channel", channel, "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert out["correct"] is True and out["checked_against"] == "oracle"
    assert out["n_categories"] > 0 and out["channel"] == channel
    assert out["cost_usd"]["total_usd"] > 0
    # the workers' counts, reported by name, are in: the coordinator alone sends 4 inputs
    assert set(out["requests"]) == set(transport(channel).OPS)
    sends = {"nats": "publish", "s3": "put", "sqs": "send_batch", "sns": "publish_batch"}
    assert out["requests"][sends[channel]] >= 4 * 30
    assert out["requests"]["get" if channel == "s3" else "receive"] >= 4 * 30


@pytest.mark.parametrize("channel", ["sqs", "sns"])
def test_cli_runs_on_the_aws_endpoint_url_it_is_given(
    channel: str,
    moto_server: MotoServer,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``AWS_ENDPOINT_URL`` (boto3's own variable) names the server: no embedded one starts."""
    for var in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.secret_key)
    monkeypatch.setenv("AWS_REGION", moto_server.region)
    monkeypatch.setenv("FSD_AWS_PREFIX", f"cli{channel}")
    monkeypatch.setattr(MotoServer, "__init__", None)  # starting one would fail the test
    code = cli.main(
        ["run", "--data", str(shared_dir), "--workers", "4", "--channel", channel, "--json"]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert out["correct"] is True and out["n_categories"] == 73 and out["channel"] == channel


@pytest.mark.parametrize("kind", ["nats", "s3"])
def test_refused_credentials_are_reported_as_such_at_once(
    kind: str, nats_server: NatsServer, s3_server: S3Server
) -> None:
    """A wrong token or key is an authorization error within 2 s, not a 'did not answer' later.

    Both transports would otherwise retry for retry_seconds (30 s here) or the connect timeout.
    """
    if kind == "nats":
        config = ChannelConfig(
            "nats", nats_server.url, secret=KEY, options=NatsOptions(token=SECRET)
        )
        expected = "refused the credentials"
    else:
        config = ChannelConfig(
            "s3",
            s3_server.endpoint,
            secret=KEY,
            options=S3Options(access_key="nobody", secret_key=SECRET),
        )
        expected = "check the keys"
    t0 = time.monotonic()
    with pytest.raises(ChannelError, match=expected) as info:
        open_channel(config, uuid.uuid4().bytes, 0)
    assert time.monotonic() - t0 < 2.0
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"max_frame": 0}, "max_frame"),
        ({"max_frame": 1 << 40}, "max_frame"),
        ({"connect_timeout": float("nan")}, "connect_timeout"),
        ({"retry_seconds": float("inf")}, "retry_seconds"),
        ({"ttl_seconds": -1.0}, "ttl_seconds"),
        ({"namespace": "fsd.>"}, "namespace"),
        ({"namespace": ""}, "namespace"),
    ],
)
def test_channel_settings_out_of_bounds_are_refused(change: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        ChannelConfig("nats", "nats://127.0.0.1:4222", secret=KEY, **change)


def test_a_short_deployment_secret_is_refused() -> None:
    with pytest.raises(InputError, match="FSD_RUN_KEY is too short"):
        channel_config("nats", env={"FSD_RUN_KEY": "short"})
    assert channel_config("nats", env={"FSD_RUN_KEY": "k" * 32}).secret == b"k" * 32


# --- NATS: .creds files, addresses, an unreachable server ---------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _nkey(prefix: int) -> Any:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _jwt(issuer: Any, subject: Any, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for ``subject``'s public key, signed by ``issuer``'s seed, as nsc does."""
    body: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode()}
    body |= {"name": name, "sub": subject.public_key.decode(), "nats": claims | {"version": 2}}
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode()
    header = json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()
    signed = f"{_b64(header)}.{_b64(json.dumps(body).encode())}"
    return f"{signed}.{_b64(issuer.sign(signed.encode()))}"


class _OperatorNats(NatsServer):
    """nats-server in operator (JWT) mode, the one way to check a user's ``.creds`` file: an
    operator signs the account (JetStream on) and a system account, the account signs the
    user whose JWT and seed make :attr:`creds`."""

    def __init__(self) -> None:
        super().__init__()
        operator, account, system, user = (
            _nkey(nkeys.PREFIX_BYTE_OPERATOR),
            _nkey(nkeys.PREFIX_BYTE_ACCOUNT),
            _nkey(nkeys.PREFIX_BYTE_ACCOUNT),
            _nkey(nkeys.PREFIX_BYTE_USER),
        )
        unlimited = dict.fromkeys(
            ("subs", "data", "payload", "conn", "mem_storage", "disk_storage", "streams"), -1
        ) | {"consumer": -1}
        accounts = {
            account.public_key.decode(): _jwt(
                operator, account, "fsd", {"type": "account", "limits": unlimited}
            ),
            system.public_key.decode(): _jwt(operator, system, "SYS", {"type": "account"}),
        }
        self._trust = (
            f"operator: {_jwt(operator, operator, 'fsd-test', {'type': 'operator'})}\n"
            f"system_account: {system.public_key.decode()}\n"
            f"resolver: MEMORY\nresolver_preload: {json.dumps(accounts)}\n"
        )
        limits = {"subs": -1, "data": -1, "payload": -1}
        user_jwt = _jwt(account, user, "worker", {"type": "user", "pub": {}, "sub": {}} | limits)
        self.creds = Path(self.workdir) / "user.creds"
        self.creds.write_text(
            f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )

    def _prepare(self) -> None:
        store = json.dumps(self.store_dir)
        Path(self.config_path).write_text(
            f"listen: 127.0.0.1:{self.port}\njetstream {{ store_dir: {store} }}\n{self._trust}"
        )

    def credentials(self) -> dict[str, str]:
        return {"user_credentials": str(self.creds)}


def test_nats_creds_file_works_end_to_end() -> None:
    """FSD_NATS_CREDS (a user JWT and its NKey seed) against a server that checks them: nkeys,
    which nats-py signs with, is a runtime dependency."""
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("nats-py[nkeys]") for d in runtime), runtime
    with _OperatorNats() as server:
        env = {"FSD_NATS_URL": server.url, "FSD_NATS_CREDS": str(server.creds)}
        _ping(dataclasses.replace(channel_config("nats", env=env), secret=KEY))
        with pytest.raises(ChannelError, match="refused the credentials"):  # it does check
            _ping(ChannelConfig("nats", server.url, retry_seconds=1, secret=KEY))


@pytest.mark.parametrize(
    "text",
    [
        "",  # nats-py read past the end of this one forever, on the event loop
        "-----BEGIN NATS USER JWT-----\n",
        "-----BEGIN NATS USER JWT-----\nnot.a.jwt!\n-----BEGIN USER NKEY SEED-----\nSU\n",
        "-----BEGIN NATS USER JWT-----\na.b.c\n-----BEGIN USER NKEY SEED-----\nSUAAAA\n",
        "-----BEGIN NATS USER JWT-----\na.b.c\n-----BEGIN USER NKEY SEED-----\n\xff\n",
        "x" * (MAX_CREDS_BYTES + 1),
    ],
    ids=["empty", "no-jwt", "bad-jwt", "bad-seed", "binary", "huge"],
)
def test_a_malformed_creds_file_is_refused_at_once(tmp_path: Path, text: str) -> None:
    path = tmp_path / "user.creds"
    path.write_bytes(text.encode("latin-1"))
    env = {"FSD_NATS_URL": "nats://127.0.0.1:4222", "FSD_NATS_CREDS": str(path)}
    with pytest.raises(InputError, match=r"FSD_NATS_CREDS: .* is not a NATS \.creds file"):
        channel_config("nats", env=env)


def test_a_nats_url_without_scheme_works_with_every_supported_client(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``host:port`` means ``nats://host:port`` (fsd.urls). nats-py up to 2.10 read the entries
    of a server list as full URLs (no host in ``127.0.0.1:4222``): the client is given the
    explicit URL, so such a release connects at once instead of failing 15 s later."""
    monkeypatch.setattr(Client, "_parse_server_uri", staticmethod(urllib.parse.urlparse))
    bare = nats_server.url.removeprefix("nats://")
    env = {"FSD_NATS_URL": bare, "FSD_NATS_TOKEN": nats_server.token}
    config = dataclasses.replace(channel_config("nats", env=env), retry_seconds=2, secret=KEY)
    t0 = time.monotonic()
    _ping(config)
    assert time.monotonic() - t0 < 5


#: one endpoint opened on a port nobody listens on, in a fresh interpreter (asyncio reports
#: what a closed loop left running when the interpreter exits)
_UNREACHABLE = """
import sys, uuid
from fsd import auth
from fsd.channels import ChannelConfig, open_channel
from fsd.errors import ChannelError
config = ChannelConfig(
    "nats", sys.argv[1], connect_timeout=0.1, retry_seconds=20, secret=auth.new_secret()
)
try:
    open_channel(config, uuid.uuid4().bytes, 0)
except ChannelError as exc:
    print(exc, file=sys.stderr)
"""


def test_an_unreachable_nats_is_one_line() -> None:
    """The connection attempt ends with the channel: nothing left pending on its loop."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-c", _UNREACHABLE, f"nats://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"nats://127.0.0.1:{port} did not answer in 5.1 s (last error: " in lines[0]


def _sqs_config(moto: MotoServer, **change: Any) -> ChannelConfig:
    return ChannelConfig(
        change.pop("kind", "sqs"),
        moto.endpoint,
        secret=KEY,
        options=AwsOptions(
            access_key=moto.access_key, secret_key=moto.secret_key, region=moto.region
        ),
        **change,
    )


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_an_empty_receive_is_billed_as_one_request(kind: str, moto_server: MotoServer) -> None:
    """A ReceiveMessage that returns nothing is still a billed SQS request: its unit counts."""
    cfg = _sqs_config(moto_server, namespace=f"empty{kind}", kind=kind)
    run_id = uuid.uuid4().bytes
    with open_channel(cfg, run_id, 0) as ch:
        assert ch.collect(wire.Kind.ACT, 1, [1], timeout=1.5) == {}
        ops = dict(ch.stats.ops)
    assert ops["receive"] >= 1
    assert ops["receive_units"] == ops["receive"]
    cost = estimate(transport(kind).BILLING, ops)
    assert cost.requests["sqs_request"] >= ops["receive"]


def _client(moto: MotoServer, service: str, endpoint: str = "") -> Any:
    """A boto3 client of the (locked) moto server, signing with its keys."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint or moto.endpoint,
        region_name=moto.region,
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
    )


def _sqs_queues(moto: MotoServer, prefix: str) -> list[str]:
    client = _client(moto, "sqs")
    return list(client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []))


def test_sqs_runs_leave_no_queue_behind(
    moto_server: MotoServer, shared_net: Network, shared_images: Images
) -> None:
    cfg = _sqs_config(moto_server, namespace="sqsleftovers")
    result = run(
        shared_net,
        shared_images.matrix[:200],
        RunConfig(workers=3, channel="sqs", channel_config=cfg),
    )
    assert result.categories.tolist() == [c for c in shared_images.truth[120] if c < 200]
    assert _sqs_queues(moto_server, "sqsleftovers") == []


def test_sqs_requests_stay_within_sqs_limits(moto_server: MotoServer) -> None:
    """moto checks only message bodies against 1 MiB; SQS counts attributes too (name, type and
    value): every request this channel sends must fit, counted SQS's way."""
    sizes: list[list[int]] = []

    def counted(params: dict[str, Any], **_: Any) -> None:
        sizes.append(
            [
                len(e["MessageBody"].encode())
                + sum(
                    len(name) + len(a["DataType"]) + len(a.get("BinaryValue", b""))
                    for name, a in e.get("MessageAttributes", {}).items()
                )
                for e in params["Entries"]
            ]
        )

    run_id = uuid.uuid4().bytes
    cfg = _sqs_config(moto_server, max_frame=8 * 1024 * 1024)  # above SQS's limit: it must lower it
    with open_channel(cfg, run_id, 0) as a, open_channel(cfg, run_id, 1) as b:
        assert isinstance(a, SqsChannel)
        a._sqs.meta.events.register("provide-client-params.sqs.SendMessageBatch", counted)
        n = 400_000  # ~4.8 MB
        msg = wire.Message(
            wire.Header(wire.Kind.ACT, run_id, 1, 0, 1),
            [np.arange(n, dtype=np.uint32), np.random.default_rng(1).random(n).astype(np.float32)],
        )
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 1, [0], timeout=20)[0] == msg
    assert sum(len(batch) for batch in sizes) == a.stats.messages > 1
    assert all(size <= 1024 * 1024 for batch in sizes for size in batch)
    assert all(sum(batch) <= 1024 * 1024 and len(batch) <= 10 for batch in sizes)


def test_sqs_settings_from_the_environment() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://moto:5000",
        "AWS_REGION": "eu-west-1",
        "FSD_AWS_PREFIX": "prod-a",
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
    }
    cfg = channel_config("sqs", env=env)
    own = options(cfg, AwsOptions)
    assert (cfg.address, own.region, cfg.namespace) == ("http://moto:5000", "eu-west-1", "prod-a")
    assert (own.access_key, own.secret_key) == ("", "")  # boto3's own chain reads them
    specific = channel_config("sqs", env={**env, "AWS_ENDPOINT_URL_SQS": "https://sqs.test:443"})
    assert specific.address == "https://sqs.test:443"
    ignored = {**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert channel_config("sqs", env=ignored).address == ""  # AWS itself
    with pytest.raises(InputError, match="AWS_ENDPOINT_URL"):
        channel_config("sqs", env={"AWS_ENDPOINT_URL": "http://user:pw@moto:5000"})
    with pytest.raises(InputError, match="namespace"):
        channel_config("sqs", env={"FSD_AWS_PREFIX": "Bad Prefix"})


def test_s3_signs_with_the_session_token_of_temporary_keys() -> None:
    """A Lambda role's keys are temporary: every S3 request must carry their session token
    (``X-Amz-Security-Token``), or AWS refuses it."""
    token = "IQoJb3JpZ2luX2Vj" + uuid.uuid4().hex
    recorder = Recorder()
    try:
        env = {
            "FSD_S3_ENDPOINT": f"http://{recorder.url}",
            "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_SESSION_TOKEN": token,
        }
        cfg = dataclasses.replace(
            channel_config("s3", env=env), secret=KEY, retry_seconds=0, connect_timeout=2
        )
        assert options(cfg, S3Options).session_token == token and token not in repr(cfg)
        with pytest.raises(ChannelError):  # the recorder answers nothing
            open_channel(cfg, uuid.uuid4().bytes, 0)
        request = recorder.wait_received(1)[0].lower()
    finally:
        recorder.close()
    assert f"x-amz-security-token: {token.lower()}".encode() in request


def test_s3_channel_and_model_store_work_on_moto_s3_unchanged(
    moto_server: MotoServer, shared_net: Network
) -> None:
    """Issue 11 item 3: the ``s3`` channel and the model store against another S3 (moto's, which
    follows AWS's API), with nothing changed but the endpoint."""
    env = {
        "FSD_S3_ENDPOINT": moto_server.endpoint,
        "FSD_S3_BUCKET": "fsd-moto-s3",
        "AWS_ACCESS_KEY_ID": moto_server.access_key,
        "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
        "AWS_REGION": moto_server.region,
    }
    cfg = dataclasses.replace(channel_config("s3", env=env), secret=KEY)
    run_id = uuid.uuid4().bytes
    with open_channel(cfg, run_id, 0) as a, open_channel(cfg, run_id, 1) as b:
        msg = wire.Message(
            wire.Header(wire.Kind.ACT, run_id, 1, 0, 1), [np.arange(5, dtype=np.uint32)]
        )
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 1, [0], timeout=10)[0] == msg
        a.purge_run([0, 1])
    store = ModelStore(StoreConfig.from_env(env))
    store.push(shared_net, "gc-moto", [2], ("contiguous",))
    manifest = store.manifest("gc-moto")
    assert (manifest.neurons, manifest.layers) == (1024, 120) and manifest.has(2, "contiguous")


def test_sns_reaches_sqs_at_its_own_endpoint(moto_server: MotoServer) -> None:
    """``AWS_ENDPOINT_URL_SNS`` and ``AWS_ENDPOINT_URL_SQS`` name two services: the sns channel's
    queues are made where SQS is, its subscriptions where SNS is."""
    # one AWS account: the same keys at both endpoints
    keys = (moto_server.access_key, moto_server.secret_key)
    with MotoServer(access_key=keys[0], secret_key=keys[1]) as queues:
        env = {
            "AWS_ENDPOINT_URL_SNS": moto_server.endpoint,
            "AWS_ENDPOINT_URL_SQS": queues.endpoint,
            "FSD_AWS_PREFIX": "twoends",
        }
        cfg = channel_config("sns", env=env)
        own = options(cfg, AwsOptions)
        assert (cfg.address, own.queue_address) == (moto_server.endpoint, queues.endpoint)
        cfg = dataclasses.replace(
            cfg,
            secret=KEY,
            options=dataclasses.replace(
                own,
                access_key=moto_server.access_key,
                secret_key=moto_server.secret_key,
                region=moto_server.region,
            ),
        )
        with open_channel(cfg, uuid.uuid4().bytes, 0):
            pass

        def queue_names(endpoint: str) -> list[str]:
            client = _client(moto_server, "sqs", endpoint)
            urls = client.list_queues(QueueNamePrefix="twoends").get("QueueUrls", [])
            return [u.rsplit("/", 1)[-1] for u in urls]

        assert queue_names(queues.endpoint) == ["twoends-sns-w0"]
        assert queue_names(moto_server.endpoint) == []
    only_sns = channel_config("sns", env={"AWS_ENDPOINT_URL_SNS": moto_server.endpoint})
    sqs_of_sns = options(only_sns, AwsOptions).queue_address
    assert sqs_of_sns == "https://sqs.us-east-1.amazonaws.com"  # SQS: AWS's own
    both = channel_config("sns", env={"AWS_ENDPOINT_URL": moto_server.endpoint})
    assert (both.address, options(both, AwsOptions).queue_address) == (moto_server.endpoint, "")


def test_sns_routes_each_frame_to_its_receivers_queue_only(moto_server: MotoServer) -> None:
    cfg = dataclasses.replace(_sqs_config(moto_server, namespace="snsroute"), kind="sns")
    run_id = uuid.uuid4().bytes
    with (
        open_channel(cfg, run_id, 0) as a,
        open_channel(cfg, run_id, 1),
        open_channel(cfg, run_id, 2),
    ):
        a.send(wire.Message(wire.Header(wire.Kind.ACT, run_id, 1, 0, 1), []))
    client = _client(moto_server, "sqs")

    def waiting(name: str) -> int:
        url = client.get_queue_url(QueueName=name)["QueueUrl"]
        attrs = client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    assert (waiting("snsroute-sns-w1"), waiting("snsroute-sns-w2")) == (1, 0)


def test_sns_frames_of_another_run_are_left_for_it(moto_server: MotoServer) -> None:
    """The deployment's queues serve every run: a receiver must not eat a live run's frames
    (live: its coordinator is open)."""
    cfg = dataclasses.replace(_sqs_config(moto_server, namespace="snsruns"), kind="sns")
    mine, theirs = uuid.uuid4().bytes, uuid.uuid4().bytes
    theirs_msg = wire.Message(wire.Header(wire.Kind.ACT, theirs, 1, 0, 1), [np.arange(3)])
    with open_channel(cfg, theirs, COORDINATOR), open_channel(cfg, theirs, 0) as sender:
        sender.send(theirs_msg)
        with open_channel(cfg, mine, 1) as me:
            assert me.collect(wire.Kind.ACT, 1, [0], timeout=1.5) == {}
            assert me.stats.rejected == 0
        with open_channel(cfg, theirs, 1) as owner:
            assert owner.expect(wire.Kind.ACT, 1, [0], timeout=5)[0] == theirs_msg


class _KillWorker:
    """Replaces fsd.worker._assemble in forked workers: worker ``victim`` dies (SIGKILL) after
    ``after`` layers, as a crashed function would."""

    def __init__(self, victim: int, after: int) -> None:
        self.real = fsd.worker._assemble
        self.victim, self.after, self.calls = victim, after, 0

    def __call__(self, task: Any, got: Any, layer: Any) -> Any:
        if task.worker == self.victim:
            self.calls += 1
            if self.calls > self.after:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.real(task, got, layer)


def _visible(moto: MotoServer, prefix: str) -> dict[str, int]:
    """Messages waiting (visible) in each of ``prefix``'s queues."""
    client = _client(moto, "sqs")
    out = {}
    for url in client.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []):
        attrs = client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        out[url.rsplit("/", 1)[-1]] = int(attrs["ApproximateNumberOfMessages"])
    return out


def test_a_killed_sns_run_and_foreign_messages_leave_the_next_run_exact(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot queues are the deployment's: a run whose worker died leaves nothing in them that
    a later run must get past (it drains its queues; what a dead worker held comes back later and
    goes at the next receive), and messages anyone publishes under other run ids starve nobody.
    On the code before, leftovers were handed back forever: the next run failed ("no INPUT")."""
    prefix = "snskilled"
    cfg = _sqs_config(moto_server, namespace=prefix, kind="sns")
    network, generated = generate(1024, 20, 200, seed=11)  # 20 layers: a quick run
    images = generated.matrix
    truth = reference.categories(reference.infer(network, images)).tolist()
    config = RunConfig(workers=4, channel="sns", partition="min-comm", channel_config=cfg)
    with monkeypatch.context() as patch:
        patch.setattr(fsd.worker, "_assemble", _KillWorker(1, after=5))
        with pytest.raises(WorkerError, match="worker 1 failed"):
            run(network, images, dataclasses.replace(config, timeout=60))
    left = _visible(moto_server, prefix)
    assert left and all(n == 0 for n in left.values()), left  # drained; no marker left
    assert not [name for name in left if name.endswith("-live")]
    sns = _client(moto_server, "sns")
    topic = sns.create_topic(Name=f"{prefix}-frames")["TopicArn"]
    for i in range(24):  # more than a receive returns: they would hide the genuine frames
        sns.publish(
            TopicArn=topic,
            Message="Zm9yZ2Vk",
            MessageAttributes={
                "dst": {"DataType": "String", "StringValue": f"w{i % 2}"},
                "run": {"DataType": "String", "StringValue": uuid.uuid4().hex},
                "slot": {"DataType": "String", "StringValue": "2.0.-1.0.0"},
            },
        )
    result = run(network, images, dataclasses.replace(config, timeout=120))
    assert result.categories.tolist() == truth
    assert all(n == 0 for n in _visible(moto_server, prefix).values())


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_what_a_sigkilled_fsd_run_left_is_reaped_by_the_next_coordinator(
    kind: str, moto_server: MotoServer, shared_dir: Path, tmp_path: Path
) -> None:
    """``kill -9`` of ``fsd run`` leaves its queues (sqs: the run's own; sns: its live marker,
    which keeps its frames alive): the next coordinator to open removes them, never a live
    run's."""
    prefix = f"reap{kind}"
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": moto_server.endpoint,
        "AWS_ACCESS_KEY_ID": moto_server.access_key,
        "AWS_SECRET_ACCESS_KEY": moto_server.secret_key,
        "AWS_REGION": moto_server.region,
        "FSD_AWS_PREFIX": prefix,
    }
    for var in ("AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS"):
        env.pop(var, None)
    command = [sys.executable, "-m", "fsd.cli", "run", "--data", str(shared_dir)]
    command += ["--workers", "4", "--partitions", "4", "--channel", kind, "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = "-c" if kind == "sqs" else "-live"
    try:
        deadline = time.monotonic() + 60
        while not [n for n in _visible(moto_server, prefix) if n.endswith(marker)]:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "fsd run made no queue"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    left = [n for n in _visible(moto_server, prefix) if n.endswith(marker)]
    assert left  # what a killed run leaves, before anyone reaps it
    live = uuid.uuid4().bytes
    cfg = _sqs_config(moto_server, namespace=prefix, kind=kind)
    with open_channel(cfg, live, COORDINATOR):  # a later run opens: reaps the dead one's
        names = list(_visible(moto_server, prefix))
        assert not [n for n in names if n.endswith(marker) and live.hex() not in n], names
        assert [n for n in names if n.endswith(marker) and live.hex() in n]  # its own stays


def test_sns_requests_stay_within_sns_limits(moto_server: MotoServer) -> None:
    """moto checks only the body against 256 KiB; SNS counts the attributes too."""
    sizes: list[list[int]] = []

    def counted(params: dict[str, Any], **_: Any) -> None:
        sizes.append(
            [
                len(e["Message"].encode())
                + sum(
                    len(name) + len(a["DataType"]) + len(a.get("StringValue", ""))
                    for name, a in e.get("MessageAttributes", {}).items()
                )
                for e in params["PublishBatchRequestEntries"]
            ]
        )

    run_id = uuid.uuid4().bytes
    cfg = dataclasses.replace(_sqs_config(moto_server, max_frame=8 * 1024 * 1024), kind="sns")
    with open_channel(cfg, run_id, 0) as a, open_channel(cfg, run_id, 1) as b:
        assert isinstance(a, SnsChannel)
        a._sns.meta.events.register("provide-client-params.sns.PublishBatch", counted)
        n = 200_000  # ~2.4 MB
        msg = wire.Message(
            wire.Header(wire.Kind.ACT, run_id, 1, 0, 1),
            [np.arange(n, dtype=np.uint32), np.random.default_rng(2).random(n).astype(np.float32)],
        )
        a.send(msg)
        assert b.expect(wire.Kind.ACT, 1, [0], timeout=20)[0] == msg
    assert sum(len(batch) for batch in sizes) == a.stats.messages > 1
    assert all(sum(batch) <= 256 * 1024 and len(batch) <= 10 for batch in sizes)


def test_a_run_queues_expiry_tag_is_read_with_bounds() -> None:
    """Tags are written by whoever holds SQS rights: only whole seconds of at most 12 digits
    count (a 400-digit one read as a float was an infinite expiry: a run live forever)."""
    from fsd.channels.aws import EXPIRES_TAG, tagged_expiry

    assert tagged_expiry({EXPIRES_TAG: "1765000000"}) == 1765000000.0
    for hostile in ("9" * 400, "-1", "1e9", "", " 12", "nan", "\uff11\uff12"):
        assert tagged_expiry({EXPIRES_TAG: hostile}) is None, hostile
    assert tagged_expiry({}) is None
