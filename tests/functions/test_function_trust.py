"""Forged invocations and hostile requests change nothing: the functions refuse them first.

A trap: a worker function and a coordinator function, served by the template's own server as in
production, whose NATS URL, S3 endpoint and worker URL all point at :class:`Recorder` listeners.
Whatever they refuse, they refuse with the documented status and JSON error, and without one
connection to any of those: no shard loaded, no consumer created, no child invoked.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fsd import auth
from fsd.functions import coordinator as coordinator_fn
from fsd.functions import worker as worker_fn
from fsd.localstack import FunctionServer
from fsd.services import pick_ports
from listeners import NATS_INFO, Recorder, post
from paths import ROOT

KEY = secrets.token_hex(20)  # the trap's deployment secret (FSD_RUN_KEY)
NATS_TOKEN = "trap-nats-token-" + secrets.token_hex(8)
S3_SECRET = "trap-s3-secret-" + secrets.token_hex(8)
DROP = object()  # task(...) with this value removes the field


@dataclass
class Trap:
    worker: str
    coordinator: str
    env: dict[str, str]
    recorders: dict[str, Recorder]

    def connections(self) -> dict[str, int]:
        return {name: r.count() for name, r in self.recorders.items()}

    def reset(self) -> None:
        for r in self.recorders.values():
            r.reset()


@pytest.fixture(scope="module")
def trap() -> Iterator[Trap]:
    folder = tempfile.mkdtemp(prefix="fsd-trap-")
    recorders = {
        "nats": Recorder(NATS_INFO),
        "s3": Recorder(),
        "workers": Recorder(),
        "aws": Recorder(),  # where SQS, SNS and Lambda would be: nothing may ever dial it
    }
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "src"),
        "FSD_STACK_DIR": folder,
        "FSD_SECRETS_DIR": folder,  # no secret files: everything below
        "FSD_RUN_KEY": KEY,
        "FSD_NATS_URL": f"nats://{recorders['nats'].url}",
        "FSD_NATS_TOKEN": NATS_TOKEN,
        "FSD_S3_ENDPOINT": f"http://{recorders['s3'].url}",
        "AWS_ACCESS_KEY_ID": "trapaccess",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "FSD_WORKER_URL": f"http://{recorders['workers'].url}/",
        "AWS_ENDPOINT_URL": f"http://{recorders['aws'].url}",
        "FSD_MODELS": "gc1024",
        "FSD_MAX_WORKERS": "8",
        "FSD_MAX_IMAGES": "1000",
        "FSD_TIMEOUT": "20",
        "FSD_MAX_TIMEOUT": "30",
        "FSD_FANOUT": "2",
    }
    worker_port, coordinator_port = pick_ports(2)
    servers = [
        FunctionServer("trap-worker", ROOT / "functions" / "worker", env, worker_port),
        FunctionServer(
            "trap-coordinator", ROOT / "functions" / "coordinator", env, coordinator_port
        ),
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield Trap(servers[0].url, servers[1].url, env, recorders)
    finally:
        for server in servers:
            server.stop()
        for r in recorders.values():
            r.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def clean(trap: Trap) -> Trap:
    trap.reset()
    return trap


def task(**changes: Any) -> dict[str, Any]:
    """A well-formed task for worker 0 of 4; ``channel__kind=x`` sets task["channel"]["kind"]."""
    out: dict[str, Any] = {
        "run": secrets.token_hex(16),
        "worker": 0,
        "workers": 4,
        "images": 10,
        "bias": -0.3,
        "ymax": 32.0,
        "dtype": "float32",
        "layer_timeout": 20.0,
        "model": {"name": "gc1024", "workers": 4, "partition": "min-comm"},
        "channel": {"kind": "nats", "max_frame": 4 * 1024 * 1024, "compress": True},
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = out
        for p in parents:
            node = node[p]
        if value is DROP:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def signed(body: dict[str, Any], key: str = KEY, **kw: Any) -> bytes:
    return json.dumps(auth.sign_invocation(key.encode(), body, kw.pop("ttl", 60), **kw)).encode()


def raw(value: Any) -> bytes:
    """``value`` as Python's json writes it, NaN and Infinity included."""
    return json.dumps(value, allow_nan=True).encode()


def no_secret_in(reply: dict[str, Any]) -> None:
    text = json.dumps(reply)
    for secret in (KEY, NATS_TOKEN, S3_SECRET):
        assert secret not in text


NOTHING = {"nats": 0, "s3": 0, "workers": 0, "aws": 0}


# -- forged invocations ----------------------------------------------------------------------


def _tampered() -> bytes:
    body = auth.sign_invocation(KEY.encode(), task(), 60)
    body["task"]["worker"] = 1
    return json.dumps(body).encode()


def _flipped() -> bytes:
    body = auth.sign_invocation(KEY.encode(), task(), 60)
    body["mac"] = ("0" if body["mac"][0] != "0" else "1") + body["mac"][1:]
    return json.dumps(body).encode()


def _replayed_elsewhere() -> bytes:
    """A genuine invocation for worker 0, pointed at worker 2 and re-signed with a guessed key."""
    genuine = auth.sign_invocation(KEY.encode(), task(fanout=2), 60)
    return signed({**genuine["task"], "worker": 2}, key=secrets.token_hex(20))


FORGED = [
    ("unsigned task", lambda: json.dumps(task()).encode(), 401, "unauthenticated"),
    (
        "no mac",
        lambda: json.dumps({"task": task(), "expires": int(time.time()) + 60}).encode(),
        401,
        "unauthenticated",
    ),
    ("mac flipped", _flipped, 403, "forbidden"),
    (
        "signed with another key",
        lambda: signed(task(), key=secrets.token_hex(20)),
        403,
        "forbidden",
    ),
    ("worker changed after signing", _tampered, 403, "forbidden"),
    ("replayed to another worker, re-signed", _replayed_elsewhere, 403, "forbidden"),
    ("expired", lambda: signed(task(), now=time.time() - 3600), 403, "forbidden"),
    ("valid for days", lambda: signed(task(), now=time.time() + 3 * 86400), 403, "forbidden"),
]


@pytest.mark.parametrize(("case", "body", "status", "error"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_invocation_is_refused_without_side_effect(
    clean: Trap, case: str, body: Any, status: int, error: str
) -> None:
    got, reply = post(clean.worker, body())
    assert (got, reply.get("error")) == (status, error), reply
    assert reply["detail"]
    no_secret_in(reply)
    assert clean.connections() == NOTHING


def worker_errors(url: str) -> float:
    """The worker function's fsd_errors_total, every kind summed, from its own /metrics."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "fsd_errors_total" and sample.labels.get("function") == "worker"
    )


def test_a_genuine_invocation_runs_once_and_its_replay_is_refused(clean: Trap) -> None:
    """The trap's control: a well-formed signed task does reach the store (and fails there);
    the same body sent again is refused before touching anything."""
    body = signed(task())
    errors = worker_errors(clean.worker)
    got, reply = post(clean.worker, body)
    assert (got, reply["error"]) == (500, "worker failed"), reply
    assert worker_errors(clean.worker) == errors + 1  # one failure, counted once
    no_secret_in(reply)
    touched = clean.connections()
    assert touched["s3"] > 0, touched  # it went for its shard: the trap sees side effects
    clean.reset()
    got, reply = post(clean.worker, body)
    assert (got, reply["error"]) == (409, "replayed invocation"), reply
    assert clean.connections() == NOTHING


def test_children_are_invoked_with_invocations_the_parent_signed(clean: Trap) -> None:
    """Worker 0 of 4 with fanout 2 invokes workers 2 and 3 (at the trap's worker URL), each
    with a body that verifies under the deployment secret and differs only in ``worker``."""
    sent = task(fanout=2)
    got, reply = post(clean.worker, signed(sent))
    assert got == 500, reply  # the trap's store is no store
    sent_to_children = clean.recorders["workers"].wait_received(2)
    assert clean.recorders["workers"].count() == 2
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in sent_to_children]
    workers = set()
    for body in bodies:
        child = auth.verify_invocation(KEY.encode(), json.loads(body))
        workers.add(child["worker"])
        assert {**child, "worker": 0} == sent
    assert workers == {2, 3}


# -- bounds: a signed task that names what it must not, or goes beyond the limits ------------

WORKER_BOUNDS = [
    ("stranger's address", task(channel__address="nats://127.0.0.1:1"), "channel/address"),
    ("namespace", task(channel__namespace="KV_victim"), "channel/namespace"),
    ("bucket", task(channel__bucket="victim"), "channel/bucket"),
    ("region", task(channel__region="eu-west-1"), "channel/region"),
    ("token", task(channel__token="x"), "channel/token"),
    ("address at the top", task(address="nats://127.0.0.1:1"), "task/address"),
    ("worker -1", task(worker=-1), "task/worker"),
    ("worker == workers", task(worker=4), "worker 4 of 4"),
    ("workers 0", task(workers=0), "task/workers"),
    ("workers > FSD_MAX_WORKERS", task(workers=9, model__workers=9), "FSD_MAX_WORKERS"),
    ("model cut for other workers", task(model__workers=2), "task/model/workers"),
    ("worker 1.0", task(worker=1.0), "task/worker"),
    ("images 2e9", task(images=2_000_000_000), "task/images"),
    ("images 2e9 as a float", task(images=2e9), "task/images"),
    ("images > FSD_MAX_IMAGES", task(images=1001), "FSD_MAX_IMAGES"),
    ("layer_timeout 0", task(layer_timeout=0), "task/layer_timeout"),
    ("layer_timeout > FSD_MAX_TIMEOUT", task(layer_timeout=31), "FSD_MAX_TIMEOUT"),
    ("layer_timeout true", task(layer_timeout=True), "task/layer_timeout"),
    ("fanout 100", task(fanout=100), "FSD_FANOUT"),
    (
        "100 children",  # main invoked them all before looking at anything
        task(workers=200, model__workers=200, fanout=100),
        "FSD_MAX_WORKERS",
    ),
    ("fanout -1", task(fanout=-1), "task/fanout"),
    ("dtype object", task(dtype="object"), "task/dtype"),
    ("run not hex", task(run="zz" * 16), "task/run"),
    ("run too long", task(run="00" * 17), "task/run"),
    ("model path", task(model__name="../models/x"), "task/model/name"),
    ("partition", task(model__partition="evil"), "task/model/partition"),
    ("channel kind local", task(channel__kind="local"), "task/channel/kind"),
    ("max_frame 0", task(channel__max_frame=0), "task/channel/max_frame"),
    ("bias 1e300", task(bias=1e300), "task/bias"),
    ("ymax 0", task(ymax=0.0), "task/ymax"),
    ("a field more", task(shard="..."), "task"),
    ("no layer_timeout", task(layer_timeout=DROP), "task"),
    ("deadline 0", task(deadline=0), "task/deadline"),
    ("deadline 1e12", task(deadline=1e12), "task/deadline"),
    ("deadline as text", task(deadline="soon"), "task/deadline"),
]


@pytest.mark.parametrize(
    ("case", "body", "where"), WORKER_BOUNDS, ids=[b[0] for b in WORKER_BOUNDS]
)
def test_worker_refuses_out_of_bounds_tasks_before_any_side_effect(
    clean: Trap, case: str, body: dict[str, Any], where: str
) -> None:
    got, reply = post(clean.worker, signed(body))
    assert (got, reply.get("error")) == (400, "invalid request"), reply
    assert where in reply["detail"], reply
    no_secret_in(reply)
    assert clean.connections() == NOTHING


WORKER_MALFORMED = [
    ("layer_timeout NaN", raw(task(layer_timeout=math.nan))),
    ("layer_timeout Infinity", raw(task(layer_timeout=math.inf))),
    ("bias -Infinity", raw(task(bias=-math.inf))),
    ("images 1e400", raw(task()).replace(b'"images": 10', b'"images": 1e400')),
    ("5000-digit worker", raw(task()).replace(b'"worker": 0', b'"worker": ' + b"9" * 5000)),
    ("100 000 deep", b'{"task": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
]


@pytest.mark.parametrize(("case", "body"), WORKER_MALFORMED, ids=[b[0] for b in WORKER_MALFORMED])
def test_worker_refuses_non_finite_huge_or_deep_json(clean: Trap, case: str, body: bytes) -> None:
    got, reply = post(clean.worker, body)
    assert (got, reply.get("error")) == (400, "malformed JSON"), reply
    assert clean.connections() == NOTHING


def test_worker_serves_only_its_models(clean: Trap) -> None:
    got, reply = post(clean.worker, signed(task(model__name="other-tenant")))
    assert (got, reply["error"]) == (404, "unknown model"), reply
    assert clean.connections() == NOTHING


# -- the coordinator -------------------------------------------------------------------------

STORED = {"model": "gc1024", "workers": 4, "images": {"stored": True}}
INLINE = {"model": "gc1024", "workers": 4, "inputs": {"count": 2, "rows": [1], "cols": [1]}}


def _with(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(base))
    for path, value in fields.items():
        *parents, last = path.split("__")
        node = out
        for p in parents:
            node = node[p]
        node[last] = value
    return out


COORDINATOR_BOUNDS = [
    ("timeout NaN", raw(_with(STORED, timeout=math.nan)), "malformed JSON", "NaN"),
    ("timeout > FSD_MAX_TIMEOUT", raw(_with(STORED, timeout=31)), "invalid request", "timeout"),
    (
        "5000-digit workers",
        raw(STORED).replace(b'"workers": 4', b'"workers": ' + b"4" * 5000),
        "malformed JSON",
        "digits",
    ),
    ("100 000 deep", b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed JSON", ""),
    ("workers 4.0", raw(_with(STORED, workers=4.0)), "invalid request", "workers"),
    ("workers > FSD_MAX_WORKERS", raw(_with(STORED, workers=9)), "invalid request", "workers"),
    ("first 1e300", raw(_with(STORED, images__first=1e300)), "invalid request", "images/first"),
    ("first 2**63", raw(_with(STORED, images__first=2**63)), "invalid request", "images/first"),
    ("first > FSD_MAX_IMAGES", raw(_with(STORED, images__first=1001)), "invalid request", "images"),
    ("count > FSD_MAX_IMAGES", raw(_with(INLINE, inputs__count=1001)), "invalid request", "images"),
    ("row 2**63", raw(_with(INLINE, inputs__rows=[2**63])), "invalid request", "inputs/rows"),
    ("col 2**63", raw(_with(INLINE, inputs__cols=[2**63])), "invalid request", "inputs/cols"),
    ("value NaN", raw(_with(INLINE, inputs__values=[math.nan])), "malformed JSON", "NaN"),
    ("value -Infinity", raw(_with(INLINE, inputs__values=[-math.inf])), "malformed JSON", ""),
    ("value 1e39", raw(_with(INLINE, inputs__values=[1e39])), "invalid request", "values"),
    (
        "value 1e400",
        raw(_with(INLINE, inputs__values=[1.5])).replace(b"1.5", b"1e400"),
        "malformed JSON",
        "out of range",
    ),
    ("row beyond count", raw(_with(INLINE, inputs__rows=[3])), "invalid request", "count"),
    ("rows and cols differ", raw(_with(INLINE, inputs__cols=[1, 2])), "invalid request", "length"),
]


@pytest.mark.parametrize(
    ("case", "body", "error", "mention"),
    COORDINATOR_BOUNDS,
    ids=[b[0] for b in COORDINATOR_BOUNDS],
)
def test_coordinator_refuses_bad_numbers_before_any_side_effect(
    clean: Trap, case: str, body: bytes, error: str, mention: str
) -> None:
    got, reply = post(clean.coordinator, body)
    assert (got, reply.get("error")) == (400, error), reply
    assert mention in reply["detail"], reply
    no_secret_in(reply)
    assert clean.connections() == NOTHING


def test_coordinator_serves_only_its_models_without_asking_the_store(clean: Trap) -> None:
    # the control: a model it serves does reach the store (the trap's, which is none) ...
    got, reply = post(clean.coordinator, raw(STORED))
    assert (got, reply["error"]) == (503, "channel unreachable"), reply
    no_secret_in(reply)
    assert clean.connections()["s3"] > 0
    # ... any other is unknown, whether the store has it or not, and the store is not asked
    for model in ["other-tenant", "gc1024x", "gc"]:
        clean.reset()
        got, reply = post(clean.coordinator, raw(_with(STORED, model=model)))
        assert (got, reply["error"]) == (404, "unknown model"), reply
        assert reply["detail"] == f"unknown model {model!r}"
        assert clean.connections() == NOTHING


def test_a_request_may_leave_out_the_one_model_served(clean: Trap) -> None:
    """An InferenceModel's coordinator serves one model: a request need not name it; where it
    serves several (a prefix, ``*``), leaving it out is a 400 before the store is asked."""
    anonymous = {k: v for k, v in STORED.items() if k != "model"}
    got, reply = post(clean.coordinator, raw(anonymous))
    assert (got, reply["error"]) == (503, "channel unreachable"), reply  # on to the store
    assert clean.connections()["s3"] > 0
    for served in ("gc1024,other", "gc*", "*"):
        clean.reset()
        status, reply = coordinator_fn.handle_request(
            raw(anonymous), {**clean.env, "FSD_MODELS": served}
        )
        assert (status, reply["error"]) == (400, "invalid request"), reply
        assert reply["detail"].startswith("model: required"), reply
        assert clean.connections() == NOTHING


@pytest.mark.parametrize("kind", ["sqs", "sns", "s3"])
def test_a_transport_the_deployment_does_not_run_is_a_400_without_a_connection(
    clean: Trap, kind: str
) -> None:
    """The trap runs nats alone (FSD_CHANNEL, no FSD_CHANNELS): a request for another transport,
    and a genuinely signed invocation naming one, are refused before anything is dialled; on
    the code before, sqs and sns reached for AWS with the store's keys and held the request."""
    started = time.monotonic()
    got, reply = post(clean.coordinator, raw(_with(STORED, channel=kind)))
    assert (got, reply["error"]) == (400, "invalid request"), reply
    assert f"channel: {kind!r} is not a transport this deployment runs" in reply["detail"]
    assert "FSD_CHANNELS: nats" in reply["detail"]
    got, reply = post(clean.worker, signed(task(channel__kind=kind)))
    assert (got, reply["error"]) == (400, "invalid request"), reply
    assert "task/channel/kind" in reply["detail"]
    assert time.monotonic() - started < 2.0  # a hang bound: both answers, at once
    no_secret_in(reply)
    assert clean.connections() == NOTHING


def test_requests_choose_only_among_the_transports_configured(clean: Trap) -> None:
    """``FSD_CHANNELS`` lists what the deployment runs: a listed one goes on to the store (the
    trap's, which answers nothing), the rest are refused; a default not listed, or an unknown
    name, is the function's own misconfiguration (503)."""
    env = {**clean.env, "FSD_CHANNELS": "nats,s3"}
    status, reply = coordinator_fn.handle_request(raw(_with(STORED, channel="s3")), env)
    assert (status, reply["error"]) == (503, "channel unreachable"), reply
    assert clean.connections()["s3"] > 0
    clean.reset()
    status, reply = coordinator_fn.handle_request(raw(_with(STORED, channel="sqs")), env)
    assert (status, reply["error"]) == (400, "invalid request"), reply
    assert "FSD_CHANNELS: nats, s3" in reply["detail"]
    for change, mention in (
        ({"FSD_CHANNELS": "s3", "FSD_CHANNEL": "nats"}, "not among FSD_CHANNELS"),
        ({"FSD_CHANNELS": "nats,redis"}, "FSD_CHANNELS: 'redis'"),
        ({"FSD_CHANNELS": "nats,local"}, "FSD_CHANNELS: 'local'"),
        ({"FSD_CHANNEL": "sqs-fifo"}, "FSD_CHANNEL"),
    ):
        for handle, body in (
            (coordinator_fn.handle_request, raw(STORED)),
            (worker_fn.handle_request, signed(task())),
        ):
            status, reply = handle(body, {**clean.env, **change})
            assert (status, reply["error"]) == (503, "not configured"), reply
            assert mention in reply["detail"], reply
    assert clean.connections() == NOTHING


# -- configuration: a function without a usable secret or with malformed limits refuses ------


@pytest.mark.parametrize(
    ("change", "mention"),
    [
        ({"FSD_RUN_KEY": ""}, "FSD_RUN_KEY is empty"),
        ({"FSD_RUN_KEY": "short-key"}, "FSD_RUN_KEY is too short"),
        ({"FSD_FANOUT": "x"}, "FSD_FANOUT"),
        ({"FSD_TIMEOUT": "nan"}, "FSD_TIMEOUT"),
        ({"FSD_MAX_TIMEOUT": "inf"}, "FSD_MAX_TIMEOUT"),
        ({"FSD_LAYER_TIMEOUT": "-1"}, "FSD_LAYER_TIMEOUT"),
        ({"FSD_MAX_WORKERS": "1e9"}, "FSD_MAX_WORKERS"),
        ({"FSD_TIMEOUT": "60"}, "exceeds FSD_MAX_TIMEOUT"),
        ({"FSD_MODELS": "gc1024,../x"}, "FSD_MODELS"),
    ],
)
@pytest.mark.parametrize("function", ["coordinator", "worker"])
def test_misconfigured_function_refuses_with_503(
    clean: Trap, function: str, change: dict[str, str], mention: str
) -> None:
    handle = (
        coordinator_fn.handle_request if function == "coordinator" else worker_fn.handle_request
    )
    body = raw(STORED) if function == "coordinator" else signed(task())
    status, reply = handle(body, {**clean.env, **change})
    assert (status, reply["error"]) == (503, "not configured"), reply
    assert mention in reply["detail"]
    assert "short-key" not in reply["detail"]
    assert clean.connections() == NOTHING


def test_unset_models_serve_nothing(clean: Trap) -> None:
    env = {k: v for k, v in clean.env.items() if k != "FSD_MODELS"}
    status, reply = coordinator_fn.handle_request(raw(STORED), env)
    assert (status, reply["error"]) == (404, "unknown model"), reply
    status, reply = worker_fn.handle_request(signed(task()), env)
    assert (status, reply["error"]) == (404, "unknown model"), reply
    assert clean.connections() == NOTHING


def test_credentials_in_a_configured_url_never_reach_the_caller(clean: Trap) -> None:
    """An endpoint written without a scheme, user:password@host:port, is quoted in the error
    (fsd.redact only knows scheme://user@); the reply scrubs it all the same."""
    endpoint = "KEYID:SECRETXYZ@127.0.0.1:9"
    status, reply = coordinator_fn.handle_request(
        raw(STORED), {**clean.env, "FSD_S3_ENDPOINT": endpoint}
    )
    assert status == 503, reply
    assert "SECRETXYZ" not in json.dumps(reply) and "KEYID" not in json.dumps(reply)
