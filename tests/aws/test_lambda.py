"""The Lambda path: the launcher's boto3 ``Invoke`` calls, the ``fsd.aws`` handlers, end to end.

What stands in for Lambda, and why: nothing here can run a Lambda function (moto's Lambda runs
code only in Docker, and tests never reach AWS), so :mod:`lambda_standin` implements the two
APIs fsd meets: the ``Invoke`` API that boto3 calls, and, for each invocation, a Runtime API
that a fresh ``python -m awslambdaric fsd.aws.worker.handler`` process polls, the loop AWS's
Python base images run. The handlers therefore run as Lambda's Python runtime runs them: the
event parsed by the runtime client, one process per invocation, the outcome posted back. The
stand-in also delivers ``OnFailure`` invocation records to a real SQS queue (moto_server), as
the SAM template configures. Not covered (the stand-in cannot show them): cold-start latency,
concurrency limits and reserved concurrency, IAM, Lambda's own async retries (fsd sets 0), the
maximum event age and the async queue's delays; throttling is a switch that answers 429.

Everything else is real: nats-server, SeaweedFS and moto_server for SQS and Secrets Manager (the
session's, tests/conftest.py), and the shared Graph Challenge net (skipped when ../shared is
absent). As in a deployment, the store's keys (``FSD_S3_*``, the ``fsd-s3-*`` secret files) and
the AWS keys (``AWS_*``, the role's; here the locked moto's) are apart, and each service takes
only its own.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fsd import auth
from fsd.aws import coordinator as aws_coordinator
from fsd.aws import settings as aws_settings
from fsd.aws import worker as aws_worker
from fsd.channels import ChannelConfig
from fsd.embedded.aws import MotoServer
from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.errors import FsdError, InputError
from fsd.launch import make_launcher
from fsd.launch.lambda_ import ASYNC_PAYLOAD_LIMIT, LambdaLauncher, LambdaOptions
from fsd.model import Images, Network
from fsd.store import ModelStore, StoreConfig
from fsd.task import ModelRef, WorkerTask
from lambda_standin import REGION, Function, LambdaStandIn, OnFailure, environment

WORKER = "fsd-worker"
KEY = "k" * 40
LAYER_TIMEOUT = 20


AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def moto_client(service: str, moto: MotoServer) -> Any:
    """A boto3 client of the session's moto_server, signing with its keys (it takes no other)."""
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=moto.endpoint,
        region_name=REGION,
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
    )


def use_moto_keys(monkeypatch: pytest.MonkeyPatch, moto: MotoServer) -> None:
    """boto3 in this process signs with moto's keys, as a function signs with its role's.

    boto3's default session keeps the first keys it found (from whichever test ran first): it is
    dropped, so that the handlers' ``boto3.client`` calls read these.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


class Context:
    """What awslambdaric hands a handler; only the remaining time is read."""

    def get_remaining_time_in_millis(self) -> int:
        return 120_000


@pytest.fixture
def aws(
    monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer, tmp_path: Path
) -> Iterator[LambdaStandIn]:
    """The stand-in, with boto3 in this process pointed at it (Lambda) and at moto (the rest),
    and this test's own OnFailure queue (the moto server is the session's)."""
    sqs = moto_client("sqs", moto_server)
    queue = sqs.create_queue(QueueName=f"fsd-failures-{uuid.uuid4().hex}")["QueueUrl"]
    keys = (moto_server.access_key, moto_server.secret_key)
    standin = LambdaStandIn(tmp_path, on_failure=OnFailure(moto_server.endpoint, queue, *keys))
    use_moto_keys(monkeypatch, moto_server)
    for name, value in {
        "AWS_ENDPOINT_URL_LAMBDA": standin.url,
        "AWS_ENDPOINT_URL_SQS": moto_server.endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_server.endpoint,
        "FSD_FAILURE_QUEUE_URL": queue,
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield standin
    finally:
        standin.close(wait=False)  # a failed run's workers would end at their layer timeout
        sqs.delete_queue(QueueUrl=queue)


@pytest.fixture(scope="module")
def pushed(
    nats_server: NatsServer, s3_server: S3Server, shared_net: Network, shared_images: Images
) -> dict[str, str]:
    """The functions' own settings, the shared net pushed to the store for 4 workers."""
    env = {
        "FSD_NATS_URL": nats_server.url,
        "FSD_NATS_TOKEN": nats_server.token,
        "FSD_S3_ENDPOINT": s3_server.endpoint,
        # the store's own keys, as the fsd-s3-* secret files set them: AWS_* are moto's
        "FSD_S3_ACCESS_KEY_ID": s3_server.access_key,
        "FSD_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
        "FSD_RUN_KEY": KEY,
        "FSD_MODELS": "gc1024",
        "FSD_LAYER_TIMEOUT": str(LAYER_TIMEOUT),
        "FSD_SECRETS_DIR": "/nonexistent",
    }
    ModelStore(StoreConfig.from_env(env)).push(
        shared_net, "gc1024", [4], ("min-comm",), shared_images
    )
    return env


def url_event(body: bytes, method: str = "POST", b64: bool = False) -> dict[str, Any]:
    """A Lambda Function URL request (payload format 2.0)."""
    return {
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {"http": {"method": method, "path": "/"}},
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }


def coordinate(
    monkeypatch: pytest.MonkeyPatch, standin: LambdaStandIn, env: dict[str, str], **req: Any
) -> tuple[int, dict[str, Any]]:
    """Register the worker function with ``env`` and call the coordinator handler; both
    functions have moto's keys as ``AWS_*`` (the ``aws`` fixture's), as both have a role."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FSD_WORKER_FUNCTION", WORKER)
    worker_env = {
        **env,
        **{name: os.environ[name] for name in AWS_KEYS},
        "FSD_WORKER_FUNCTION": WORKER,
        "AWS_ENDPOINT_URL_LAMBDA": standin.url,
        "AWS_DEFAULT_REGION": REGION,
    }
    standin.functions[WORKER] = Function("fsd.aws.worker.handler", environment(worker_env))
    answer = aws_coordinator.handler(url_event(json.dumps(req).encode(), b64=True), Context())
    assert answer["headers"]["Content-Type"] == "application/json"
    return answer["statusCode"], json.loads(answer["body"])


def test_end_to_end_through_lambda_invokes(
    monkeypatch: pytest.MonkeyPatch,
    aws: LambdaStandIn,
    pushed: dict[str, str],
    shared_images: Images,
) -> None:
    """A fan-out tree (FSD_FANOUT 2): the coordinator invokes workers 0 and 1, worker 0 invokes
    2 and 3 through its own Lambda launcher; every invoke is asynchronous."""
    tree = {**pushed, "FSD_FANOUT": "2"}
    status, reply = coordinate(
        monkeypatch, aws, tree, model="gc1024", workers=4, channel="nats", images={"stored": True}
    )
    assert status == 200, reply
    assert reply["categories"] == shared_images.truth[120].tolist()
    assert reply["correct"] is True and reply["n_categories"] == 73
    events = [json.loads(p) for name, kind, p in aws.calls if name == WORKER]
    assert [kind for _, kind, _ in aws.calls] == ["Event"] * 4
    assert sorted(e["task"]["worker"] for e in events) == [0, 1, 2, 3]
    assert all(e["task"]["fanout"] == 2 for e in events)  # the coordinator sent only 0 and 1
    aws.close()  # every worker process has ended and answered
    assert len({o.request_id for o in aws.outcomes}) == 4
    assert all(o.error is None and o.exit_code is not None for o in aws.outcomes)


def test_end_to_end_over_sqs_as_the_template_deploys_it(
    monkeypatch: pytest.MonkeyPatch,
    aws: LambdaStandIn,
    pushed: dict[str, str],
    moto_server: MotoServer,
    shared_images: Images,
) -> None:
    """``FSD_CHANNEL`` sqs, as deploy/aws/template.yaml sets it: the request names no channel,
    both functions reach SQS through boto3's own endpoint variable, and the workers' counted
    operations come back by name."""
    env = {
        **pushed,
        "FSD_CHANNEL": "sqs",
        "AWS_ENDPOINT_URL_SQS": moto_server.endpoint,
        "FSD_AWS_PREFIX": "fsdl",
    }
    status, reply = coordinate(
        monkeypatch, aws, env, model="gc1024", workers=4, images={"stored": True}
    )
    assert status == 200, reply
    assert reply["channel"] == "sqs"
    assert reply["correct"] is True and reply["n_categories"] == 73
    assert reply["requests"]["send_batch"] >= 4 * 120  # the coordinator alone sends 4
    assert reply["cost_usd"]["requests"]["sqs_request"] >= reply["requests"]["send_batch"]


def test_a_crashed_worker_is_named_from_its_onfailure_record(
    monkeypatch: pytest.MonkeyPatch, aws: LambdaStandIn, pushed: dict[str, str]
) -> None:
    """Worker 2's process is SIGKILLed once it has its event (how Lambda ends a function out of
    memory): the OnFailure record names it, where the peers' layer timeouts would name them."""
    aws.kill = lambda event: event["task"]["worker"] == 2
    t0 = time.monotonic()
    status, reply = coordinate(
        monkeypatch, aws, pushed, model="gc1024", workers=4, channel="nats", images={"stored": True}
    )
    took = time.monotonic() - t0
    assert status == 502, reply
    assert reply["error"] == "worker failed" and reply["worker"] == 2
    assert "Runtime.ExitError" in reply["detail"] and "signal: killed" in reply["detail"]
    print(f"crash reported after {took:.1f} s (layer timeout {LAYER_TIMEOUT} s)")


def launcher(failure_queue: str = "") -> LambdaLauncher:
    options = LambdaOptions(function=WORKER, failure_queue=failure_queue)
    made = make_launcher("lambda", options, secret=KEY.encode())
    assert isinstance(made, LambdaLauncher)
    return made


def test_a_payload_over_the_async_limit_is_refused_before_sending(aws: LambdaStandIn) -> None:
    aws.functions[WORKER] = Function(None)
    with launcher() as it:
        it.invoke(0, {"worker": 0, "note": "x" * 100})
        with pytest.raises(FsdError, match="asynchronous limit of 1048576 bytes"):
            it.invoke(1, {"worker": 1, "pad": "x" * ASYNC_PAYLOAD_LIMIT})
    assert [json.loads(p)["task"]["worker"] for _, _, p in aws.calls] == [0]


def test_throttling_is_retried_then_given_up_with_a_clear_error(aws: LambdaStandIn) -> None:
    aws.functions[WORKER] = Function(None)
    aws.throttle = 2  # the third attempt gets through
    with launcher() as it:
        it.invoke(0, {"worker": 0})
    assert it.failures() == {} and it.attempts[0] == 3 and len(aws.calls) == 3
    aws.calls.clear()
    aws.throttle = 100
    with LambdaLauncher(WORKER, KEY.encode(), max_attempts=3) as it:
        it.invoke(1, {"worker": 1})
    assert len(aws.calls) == 3
    why = it.failures()[1]
    assert why.startswith("Invoke failed after 3 attempt(s): TooManyRequestsException"), why


def test_only_verified_failure_records_of_this_run_fail_a_worker(
    aws: LambdaStandIn, moto_server: MotoServer
) -> None:
    """OnFailure records are read like any input: a forged one, a malformed one and another
    run's do not fail a worker; this run's, signed with the deployment secret, does."""
    aws.functions[WORKER] = Function(None)
    secret = KEY.encode()
    run = uuid.uuid4().bytes
    model = ModelRef("gc1024", 2, "min-comm")
    tasks = [
        WorkerTask(run, p, 2, 10, None, -0.3, 32.0, "float32", ChannelConfig("nats"), model=model)
        for p in range(2)
    ]
    queue = os.environ["FSD_FAILURE_QUEUE_URL"]
    sqs = moto_client("sqs", moto_server)

    def record(payload: Any) -> None:
        body = {"requestContext": {"condition": "RetriesExhausted"}, "requestPayload": payload}
        body["responsePayload"] = {"errorType": "Runtime.ExitError", "errorMessage": "killed"}
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))

    with launcher(failure_queue=queue) as it:
        it.launch(tasks)
        other = {**tasks[0].to_json(), "run": uuid.uuid4().hex}
        record(auth.sign_invocation(secret, other, 60))  # another run's
        record(auth.sign_invocation(b"x" * 40, tasks[0].to_json(), 60))  # forged
        record({"task": tasks[0].to_json(), "expires": 1, "mac": "0" * 64})  # malformed
        record(auth.sign_invocation(secret, tasks[1].to_json(), 60))  # this run's worker 1
        for _ in range(600):  # until the poller has taken the genuine record
            if it.failures():
                break
            time.sleep(0.05)
        time.sleep(1.5)  # one more long poll: the others had their chance to count too
        failed = it.failures()
    assert list(failed) == [1], failed
    assert failed[1] == "Lambda reported Runtime.ExitError: killed (RetriesExhausted)"


def test_settings_come_from_configuration_never_from_the_request(
    monkeypatch: pytest.MonkeyPatch, aws: LambdaStandIn
) -> None:
    """A request naming a function, a queue or an address is refused before anything is
    invoked; an invocation naming an address is refused by the worker handler."""
    monkeypatch.setenv("FSD_RUN_KEY", KEY)
    monkeypatch.setenv("FSD_MODELS", "gc1024")
    monkeypatch.setenv("FSD_SECRETS_DIR", "/nonexistent")
    for field, value in (
        ("worker_function", "arn:aws:lambda:us-east-1:999999999999:function:evil"),
        ("failure_queue", "https://sqs.us-east-1.amazonaws.com/999999999999/evil"),
        ("nats_url", "nats://evil.example:4222"),
    ):
        body = json.dumps({"model": "gc1024", "images": {"stored": True}, field: value}).encode()
        answer = aws_coordinator.handler(url_event(body), Context())
        assert answer["statusCode"] == 400, answer
        assert field in json.loads(answer["body"])["detail"]
    assert aws.calls == []
    task = {"worker": 0, "workers": 1, "channel": {"kind": "nats", "address": "nats://evil:1"}}
    with pytest.raises(aws_worker.InvocationFailed, match="own configuration"):
        aws_worker.handler(auth.sign_invocation(KEY.encode(), task, 60), Context())
    for bad in ("", "https://evil.example/fn", "fn?x=1"):
        with pytest.raises(InputError, match="FSD_WORKER_FUNCTION"):
            LambdaLauncher(bad, KEY.encode())


def test_function_url_methods_and_bodies(
    monkeypatch: pytest.MonkeyPatch, aws: LambdaStandIn
) -> None:
    monkeypatch.setenv("FSD_RUN_KEY", KEY)
    monkeypatch.setenv("FSD_MODELS", "gc1024")
    monkeypatch.setenv("FSD_SECRETS_DIR", "/nonexistent")
    health = aws_coordinator.handler(url_event(b"", method="GET"), Context())
    assert health["statusCode"] == 200
    put = aws_coordinator.handler(url_event(b"{}", method="PUT"), Context())
    assert put["statusCode"] == 405 and put["headers"]["Allow"] == "GET, POST"
    odd = aws_coordinator.handler({**url_event(b"{"), "requestContext": []}, Context())
    assert odd["statusCode"] == 400 and json.loads(odd["body"])["error"] == "malformed JSON"
    bad = aws_coordinator.handler({**url_event(b"{}"), "isBase64Encoded": True}, Context())
    assert bad["statusCode"] == 400
    assert json.loads(bad["body"])["error"] == "malformed JSON"


def test_secrets_from_secrets_manager_by_arn(
    monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer
) -> None:
    client = moto_client("secretsmanager", moto_server)
    arn = client.create_secret(
        Name=f"fsd-{uuid.uuid4().hex}",
        SecretString=json.dumps({"fsd-run-key": KEY, "fsd-nats-token": "tok-123", "x": "y"}),
    )["ARN"]
    use_moto_keys(monkeypatch, moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server.endpoint)
    env = aws_settings.lambda_env(Context(), {"FSD_SECRETS_ARN": arn, "FSD_RUN_KEY": "old"})
    assert env["FSD_RUN_KEY"] == KEY and env["FSD_NATS_TOKEN"] == "tok-123"
    assert "x" not in env and env["FSD_LAUNCHER"] == "lambda" and env["exec_timeout"] == "120"
