"""How each platform is stood up in tests, keyed by its name in :data:`fsd.launch.PLATFORMS`.

The launcher conformance suite (tests/launch/test_launcher_conformance.py) runs every registered
platform on what :data:`STANDS` makes of it: a platform without an entry here fails that suite
(it is not skipped). Every stand uses real servers: the session's nats-server for the channel and
SeaweedFS for the model store (the small conformance net pushed once), and for its workers:

- ``local``: forked processes, nothing to stand up;
- ``openfaas``, ``knative``: one process of the template's entry serving ``functions/worker``
  (:class:`fsd.localstack.FunctionServer`, what the container runs), reached at its own URL as
  OpenFaaS reaches a function's URL and Knative a Service's; its children in a fan-out tree go
  to the same URL;
- ``lambda``: tests/lambda_standin.py (the Invoke API, awslambdaric running
  ``fsd.aws.worker.handler`` per invocation, OnFailure records to a queue on moto_server);
- ``toy``: tests/launch/toy_platform.py, the worker function's own entry called in this process.

A stand also names options under which no worker can be invoked (``unreachable``: a closed port,
a function that does not exist), None where workers are this machine's own processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from fsd import auth, reference
from fsd.channels import ChannelConfig
from fsd.channels.settings import channel_config
from fsd.coordinator import Prepared, RunConfig, prepare, prepare_stored
from fsd.embedded.aws import MotoServer
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.launch import LauncherOptions
from fsd.launch.knative import KnativeOptions
from fsd.launch.lambda_ import LambdaOptions
from fsd.launch.openfaas import OpenFaaSOptions
from fsd.localstack import ROOT, FunctionServer
from fsd.model.generate import generate
from fsd.services import pick_ports
from fsd.store import ModelStore, StoreConfig
from fsd.task import ModelRef
from lambda_standin import REGION, Function, LambdaStandIn, OnFailure, environment
from toy_platform import ToyOptions

KEY = "conformance-deployment-secret-0123456789"
SECRET = auth.load_secret(KEY)
WORKERS = 2  # with fanout 1, the coordinator invokes worker 0 and worker 0 invokes 1
MODEL = "conformance"
PARTITION = "contiguous"
NET, IMAGES = generate(256, 6, 20, seed=3)
TRUTH = reference.categories(reference.infer(NET, IMAGES.matrix))
LAYER_TIMEOUT = 20.0


@dataclass
class Stand:
    """A platform stood up: what a coordinator needs to run workers on it."""

    options: LauncherOptions  # workers that run and answer
    channel: ChannelConfig  # the channel of every run (the deployment's secret in it)
    prepared: Prepared  # the conformance net, cut for WORKERS, as this platform's workers get it
    unreachable: LauncherOptions | None = None  # no worker can be invoked (None: local ones)

    def config(self, kind: str, **overrides: Any) -> RunConfig:
        """A run of the conformance net on this stand."""
        base = RunConfig(
            workers=WORKERS,
            channel=self.channel.kind,
            partition=PARTITION,
            timeout=60,
            layer_timeout=LAYER_TIMEOUT,
            channel_config=self.channel,
            platform=kind,
            platform_options=self.options,
        )
        return dataclasses.replace(base, **overrides)


Standing = Callable[[pytest.FixtureRequest], contextlib.AbstractContextManager[Stand]]


def function_env(request: pytest.FixtureRequest, kind: str) -> dict[str, str]:
    """A worker function's own configuration on ``kind``: the session's NATS and store, the
    deployment secret, the conformance model only."""
    nats: NatsServer = request.getfixturevalue("nats_server")
    s3: S3Server = request.getfixturevalue("s3_server")
    return {
        "FSD_NATS_URL": nats.url,
        "FSD_NATS_TOKEN": nats.token,
        "FSD_S3_ENDPOINT": s3.endpoint,
        "FSD_S3_ACCESS_KEY_ID": s3.access_key,
        "FSD_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "FSD_S3_BUCKET": s3.bucket,
        "FSD_RUN_KEY": KEY,
        "FSD_MODELS": MODEL,
        "FSD_CHANNEL": "nats",
        "FSD_LAUNCHER": kind,
        "FSD_LAYER_TIMEOUT": str(LAYER_TIMEOUT),
        "FSD_SECRETS_DIR": "/nonexistent",
    }


_PUSHED: set[str] = set()


def stored(request: pytest.FixtureRequest) -> tuple[ChannelConfig, Prepared]:
    """The channel and the conformance net in the session's store (pushed once)."""
    env = function_env(request, "")
    store = ModelStore(StoreConfig.from_env(env))
    if env["FSD_S3_ENDPOINT"] not in _PUSHED:
        store.push(NET, MODEL, [WORKERS], (PARTITION,))
        _PUSHED.add(env["FSD_S3_ENDPOINT"])
    prepared = prepare_stored(store, ModelRef(MODEL, WORKERS, PARTITION))
    return channel_config("nats", env=env), prepared


@contextlib.contextmanager
def local(request: pytest.FixtureRequest) -> Iterator[Stand]:
    channel, _ = stored(request)
    prepared = prepare(NET, RunConfig(workers=WORKERS, partition=PARTITION))
    yield Stand(LauncherOptions(), channel, prepared)


def _http(kind: str, options: Callable[[tuple[str, ...]], LauncherOptions]) -> Standing:
    """A platform that invokes the worker function at its URL(s): one function process."""

    @contextlib.contextmanager
    def stand(request: pytest.FixtureRequest) -> Iterator[Stand]:
        channel, prepared = stored(request)
        port, closed = pick_ports(2)
        url = f"http://127.0.0.1:{port}/"
        workdir = tempfile.mkdtemp(prefix=f"fsd-{kind}-")
        env = {
            **function_env(request, kind),
            "FSD_WORKER_URL": url,  # its children, in a fan-out tree
            "FSD_STACK_DIR": workdir,
            "FSD_SHUTDOWN_DELAY_SECONDS": "0",  # no Service endpoints to leave first
            "PYTHONPATH": str(ROOT / "src"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        server = FunctionServer(f"{kind}-worker", ROOT / "functions" / "worker", env, port)
        try:
            server.wait_ready()
            dead = options((f"http://127.0.0.1:{closed}/",))
            yield Stand(options((url,)), channel, prepared, unreachable=dead)
        finally:
            server.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    return stand


def _openfaas(urls: tuple[str, ...]) -> LauncherOptions:
    return OpenFaaSOptions(urls=urls)


def _knative(urls: tuple[str, ...]) -> LauncherOptions:
    return KnativeOptions(urls=urls)


@contextlib.contextmanager
def lambda_(request: pytest.FixtureRequest) -> Iterator[Stand]:
    """The Lambda stand-in, with boto3 in this process pointed at it (Lambda) and at moto
    (the OnFailure queue), as a coordinator's role and endpoints would be."""
    channel, prepared = stored(request)
    moto: MotoServer = request.getfixturevalue("moto_server")
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
    )
    queue = sqs.create_queue(QueueName=f"fsd-conformance-{uuid.uuid4().hex}")["QueueUrl"]
    logs = request.getfixturevalue("tmp_path_factory").mktemp("lambda")
    standin = LambdaStandIn(
        logs, on_failure=OnFailure(moto.endpoint, queue, moto.access_key, moto.secret_key)
    )
    role = {
        "AWS_ACCESS_KEY_ID": moto.access_key,
        "AWS_SECRET_ACCESS_KEY": moto.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_LAMBDA": standin.url,
        "AWS_ENDPOINT_URL_SQS": moto.endpoint,
    }
    worker = "fsd-conformance-worker"
    env = {**function_env(request, "lambda"), **role, "FSD_WORKER_FUNCTION": worker}
    standin.functions[worker] = Function("fsd.aws.worker.handler", environment(env))
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in role.items():
                patch.setenv(name, value)
            patch.delenv("AWS_SESSION_TOKEN", raising=False)
            patch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the first keys it found
            yield Stand(
                LambdaOptions(function=worker, failure_queue=queue),
                channel,
                prepared,
                unreachable=LambdaOptions(function="fsd-no-such-function"),
            )
    finally:
        standin.close(wait=False)
        sqs.delete_queue(QueueUrl=queue)


@contextlib.contextmanager
def toy(request: pytest.FixtureRequest) -> Iterator[Stand]:
    """The toy's functions are this process: its environment is their configuration."""
    channel, prepared = stored(request)
    options = ToyOptions(handler="fsd.functions.worker:handle_request")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**function_env(request, "toy"), **options.to_env()}.items():
            patch.setenv(name, value)
        dead = ToyOptions(handler="toy_platform:no_such_function")
        yield Stand(options, channel, prepared, unreachable=dead)


STANDS: dict[str, Standing] = {
    "local": local,
    "openfaas": _http("openfaas", _openfaas),
    "knative": _http("knative", _knative),
    "lambda": lambda_,
    "toy": toy,
}
"""Platform name -> how to stand it up (a context manager given the test's request)."""
