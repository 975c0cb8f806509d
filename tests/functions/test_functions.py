"""Both functions served by the template's index.py, workers invoked over HTTP, real NATS and S3.

One stack for the module: an embedded nats-server and SeaweedFS, the shared Graph Challenge model
pushed for 4 workers with its images, 4 worker instances and a coordinator instance, serving
that model only (FSD_MODELS). tests/functions/test_function_trust.py has the bounds and forgeries.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from billing import billed_mb
from fsd import auth
from fsd.functions import coordinator as coordinator_fn
from fsd.localstack import ROOT, FunctionServer, LocalStack
from fsd.model import Images, Network
from fsd.model.generate import generate
from fsd.services import pick_ports
from listeners import NATS_INFO, OPENER, Recorder, post
from procs import start_prometheus


@pytest.fixture(scope="module")
def stack(
    servers_env: Mapping[str, str], shared_net: Network, shared_images: Images
) -> Iterator[LocalStack]:
    env = {
        **servers_env,
        "FSD_MAX_BODY_BYTES": str(64 * 1024),
        "FSD_LAYER_TIMEOUT": "20",
        "FSD_MODELS": "gc1024",
        "PATH": "/usr/bin:/bin",
    }
    with LocalStack(workers=4, env=env) as s:
        s.push(shared_net, "gc1024", [4], shared_images)
        yield s


def ask(stack: LocalStack, **request: Any) -> tuple[int, dict[str, Any]]:
    return post(stack.url, json.dumps(request).encode())


def test_end_to_end_over_http_then_warm(stack: LocalStack, shared_images: Images) -> None:
    status, cold = ask(stack, model="gc1024", workers=4, channel="nats", images={"stored": True})
    assert status == 200, cold
    assert cold["categories"] == shared_images.truth[120].tolist()
    assert cold["correct"] is True and cold["n_categories"] == 73
    assert cold["shard_cache"]["miss"] == 4
    status, warm = ask(stack, model="gc1024", workers=4, channel="s3", images={"stored": True})
    assert status == 200, warm
    assert warm["categories"] == cold["categories"]
    assert warm["shard_cache"] == {**warm["shard_cache"], "hit": 4, "miss": 0}
    assert warm["run_id"] != cold["run_id"]
    assert warm["cost_usd"]["total_usd"] > 0


def test_inline_inputs(stack: LocalStack, shared_images: Images) -> None:
    first = shared_images.matrix[:300].tocoo()
    inputs = {
        "count": 300,
        "rows": (first.row + 1).tolist(),
        "cols": (first.col + 1).tolist(),
        "values": first.data.tolist(),
    }
    body = json.dumps({"model": "gc1024", "workers": 4, "inputs": inputs}).encode()
    if len(body) > 64 * 1024:  # the stack's body limit: send fewer images
        inputs = {k: v[:2000] if isinstance(v, list) else v for k, v in inputs.items()}
    status, reply = ask(stack, model="gc1024", workers=4, inputs=inputs)
    assert status == 200, reply
    assert all(1 <= c <= 300 for c in reply["categories"])


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b'{"model": "gc1024"}', 400, "invalid request"),  # neither images nor inputs
        (
            b'{"model": "gc1024", "images": {"stored": true}, "workers": "4"}',
            400,
            "invalid request",
        ),
        (b'{"model": "gc1024", "images": {"stored": true}, "extra": 1}', 400, "invalid request"),
        (b'{"model": "nope", "images": {"stored": true}}', 404, "unknown model"),
        (b'{"model": "gc1024", "images": {"stored": true}, "workers": 3}', 400, "invalid request"),
        (
            b'{"model": "gc1024", "images": {"stored": true}, "workers": 4000}',
            400,
            "invalid request",
        ),
    ],
)
def test_bad_requests_get_documented_4xx(
    stack: LocalStack, body: bytes, status: int, error: str
) -> None:
    got, reply = post(stack.url, body)
    assert (got, reply["error"]) == (status, error), reply
    assert reply["detail"]


def test_inline_duplicates_that_sum_past_the_dtype_are_a_400_before_any_worker(
    stack: LocalStack,
) -> None:
    """Each value is finite in float32, their sum at one (row, col) is not: refused before a
    worker is invoked (the code before invoked them all and answered 502 once they failed)."""
    big = float(np.finfo(np.float32).max) * 0.75
    inputs = {"count": 1, "rows": [1, 1], "cols": [5, 5], "values": [big, big]}
    before = [len(w.log_path.read_bytes()) for w in stack.worker_servers]
    status, reply = ask(stack, model="gc1024", workers=4, inputs=inputs)
    assert (status, reply["error"]) == (400, "invalid request"), reply
    assert "inputs/values" in reply["detail"] and "float32" in reply["detail"]
    assert [len(w.log_path.read_bytes()) for w in stack.worker_servers] == before  # none asked


def test_too_large_body_is_413(stack: LocalStack) -> None:
    got, reply = post(stack.url, b"x" * (65 * 1024))
    assert got == 413, reply


def test_killed_worker_is_named_within_the_timeout(stack: LocalStack) -> None:
    victim = stack.worker_servers[2]
    outcome: list[tuple[int, dict[str, Any]]] = []
    t0 = time.monotonic()

    def call() -> None:
        request = {"model": "gc1024", "workers": 4, "channel": "s3", "images": {"stored": True}}
        outcome.append(ask(stack, **request, timeout=30))

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)  # the workers are in their layer loops (an s3 run takes seconds)
    victim.kill()
    thread.join(60)
    elapsed = time.monotonic() - t0
    try:
        assert outcome, "no answer"
        status, reply = outcome[0]
        assert status in (502, 504), reply
        assert reply["worker"] == 2 and "worker 2" in reply["detail"]
        assert elapsed < 40
    finally:
        stack.restart_worker(2)


def test_a_stopped_worker_function_is_named_by_its_peers(stack: LocalStack) -> None:
    """``kill -STOP`` of one worker function, with a run timeout no longer than the layer
    timeout: the peers give up just before the run's deadline (the task's ``deadline``) and
    say whom they waited for; on the code before, the deadline came first: "still running:
    [0, 1, 2, 3]"."""
    victim = stack.worker_servers[1]
    os.kill(victim.proc.pid, signal.SIGSTOP)  # alive, listening, silent
    try:
        request = {"model": "gc1024", "workers": 4, "channel": "nats", "images": {"stored": True}}
        status, reply = ask(stack, **request, timeout=8)
        assert (status, reply["error"], reply["worker"]) == (504, "worker timed out", 1), reply
        assert "stopped responding" in reply["detail"] and "still running" not in reply["detail"]
    finally:
        os.kill(victim.proc.pid, signal.SIGCONT)
        stack.restart_worker(1)


def test_a_timeout_too_short_to_keep_is_504(stack: LocalStack) -> None:
    """docs/api.md: a worker or the run out of time is 504 (it was a 502, the workers' own
    give-up read as a crash)."""
    status, reply = ask(stack, model="gc1024", workers=4, timeout=1e-9, images={"stored": True})
    assert (status, reply["error"]) == (504, "worker timed out"), reply


def test_prometheus_scrapes_the_functions_during_inference(
    stack: LocalStack, tmp_path: Path
) -> None:
    """A real Prometheus scrapes every served function; p50 of fsd_request_seconds answers."""
    targets = [f"127.0.0.1:{s.port}" for s in [*stack.worker_servers, stack.coordinator] if s]
    server, port = start_prometheus(tmp_path, targets)
    try:
        for _ in range(3):
            status, reply = ask(stack, model="gc1024", workers=4, images={"stored": True})
            assert status == 200, reply
        query = (
            "histogram_quantile(0.5, sum by (le, function) "
            '(fsd_request_seconds_bucket{function="coordinator"}))'
        )
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline and value is None:
            with OPENER.open(url, timeout=5) as resp:
                result = json.loads(resp.read())["data"]["result"]
            if result:
                value = float(result[0]["value"][1])
            else:
                time.sleep(0.5)
        assert value is not None, "Prometheus never answered the p50 query"
        # every coordinator request of this module counts, quick 4xx ones included
        assert 0 < value < 60
    finally:
        server.stop()


def test_fan_out_tree_invokes_workers_through_workers(
    stack: LocalStack, shared_images: Images
) -> None:
    """With fanout 1 the coordinator invokes worker 0 only; 0 invokes 1, 1 invokes 2, ..."""
    from fsd.channels.settings import channel_config
    from fsd.coordinator import RunConfig, infer, prepare_stored
    from fsd.launch.openfaas import OpenFaaSOptions, children
    from fsd.task import ModelRef
    from fsd.variables import function_env

    assert children(0, 7, 2) == [2, 3] and children(2, 7, 2) == [6] and children(3, 7, 2) == []
    env = stack.env
    ref = ModelRef("gc1024", 4, "min-comm")
    prepared = prepare_stored(stack.store(), ref)
    config = RunConfig(
        workers=4,
        channel="nats",
        partition="min-comm",
        timeout=60,
        layer_timeout=20,
        channel_config=channel_config("nats", env=function_env(env)),
        platform="openfaas",
        platform_options=OpenFaaSOptions.from_env(env),
        fanout=1,
    )
    result = infer(prepared, shared_images.matrix, config)
    assert result.categories.tolist() == shared_images.truth[120].tolist()
    assert sorted(result.worker_replies) == [0, 1, 2, 3]  # replies came up the chain


def test_unreachable_channel_is_503(stack: LocalStack) -> None:
    from fsd.functions.coordinator import handle_request

    env = {**stack.env, "FSD_NATS_URL": "nats://127.0.0.1:1", "FSD_SECRETS_DIR": stack.dir}
    body = json.dumps(
        {"model": "gc1024", "workers": 4, "channel": "nats", "images": {"stored": True}}
    )
    t0 = time.monotonic()
    status, reply = handle_request(body.encode(), env)
    assert status == 503 and reply["error"] == "channel unreachable", reply
    assert "127.0.0.1:1" in reply["detail"]
    assert time.monotonic() - t0 < 40


def test_gateway_basic_auth_from_the_secret(tmp_path: Path) -> None:
    """The launcher authenticates to the gateway with the fsd-gateway-password secret, and
    signs the invocation with the deployment secret (fsd-run-key)."""
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fsd.launch.openfaas import OpenFaaSLauncher
    from fsd.variables import function_env

    seen: list[str] = []
    bodies: list[bytes] = []

    class Gateway(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "fsd-gateway-password").write_text("s3cret\n")
    (tmp_path / "fsd-run-key").write_text("k" * 40 + "\n")
    env = function_env({"FSD_SECRETS_DIR": str(tmp_path)})
    url = f"http://127.0.0.1:{server.server_address[1]}/function/worker"
    secret = auth.load_secret(env["FSD_RUN_KEY"])
    launcher = OpenFaaSLauncher(
        [url], timeout=5, password=env["FSD_GATEWAY_PASSWORD"], secret=secret
    )
    launcher.invoke(0, {"run": "x"})
    launcher.close()
    server.shutdown()
    assert seen == ["Basic " + base64.b64encode(b"admin:s3cret").decode()]
    assert launcher.failures() == {} and launcher.replies == {0: {}}
    assert auth.verify_invocation(secret, json.loads(bodies[0])) == {"run": "x"}
    assert b"k" * 40 not in bodies[0]


def test_launcher_without_a_secret_refuses_to_invoke() -> None:
    from fsd.errors import AuthError
    from fsd.launch.openfaas import OpenFaaSLauncher

    with pytest.raises(AuthError, match="FSD_RUN_KEY"):
        OpenFaaSLauncher(["http://127.0.0.1:1/"], timeout=5)


def test_worker_never_connects_where_an_invocation_says(stack: LocalStack) -> None:
    """A worker deployed without FSD_NATS_URL, invoked with a stranger's NATS address: the body
    main's coordinator sent (unsigned), the same signed with the deployment's own key, and one
    naming no address. 401, 400, 503, and the stranger (a listener that greets like NATS and
    records what comes) never hears from it: no connection, no token."""
    stranger = Recorder(NATS_INFO)
    env = {k: v for k, v in stack.env.items() if k != "FSD_NATS_URL"}
    bare = FunctionServer("bare-worker", ROOT / "functions" / "worker", env, pick_ports(1)[0])
    key = (Path(stack.dir) / "fsd-run-key").read_text().strip().encode()
    old = {
        "run": "ab" * 16,
        "worker": 0,
        "workers": 4,
        "images": 10,
        "bias": -0.3,
        "ymax": 32.0,
        "dtype": "float32",
        "layer_timeout": 5.0,
        "model": {"name": "gc1024", "workers": 4, "partition": "min-comm"},
        "channel": {
            "kind": "nats",
            "address": f"nats://{stranger.url}",
            "max_frame": 4 * 1024 * 1024,
            "compress": True,
            "namespace": "fsd",
            "bucket": "fsd",
            "region": "us-east-1",
        },
    }
    mine = {**old, "run": "cd" * 16, "channel": {"kind": "nats", "compress": True}}
    try:
        bare.wait_ready()
        unsigned = post(bare.url, json.dumps(old).encode())
        assert stranger.count() == 0, stranger.received
        named = post(bare.url, json.dumps(auth.sign_invocation(key, old, 60)).encode())
        assert stranger.count() == 0, stranger.received
        none = post(bare.url, json.dumps(auth.sign_invocation(key, mine, 60)).encode())
        assert stranger.count() == 0, stranger.received
    finally:
        bare.stop()
        stranger.close()
    assert (unsigned[0], unsigned[1]["error"]) == (401, "unauthenticated"), unsigned
    assert (named[0], named[1]["error"]) == (400, "invalid request"), named
    assert "channel/address" in named[1]["detail"]
    assert (none[0], none[1]["error"]) == (503, "not configured"), none
    assert "FSD_NATS_URL" in none[1]["detail"]
    for _, reply in (unsigned, named, none):
        assert stack.env["FSD_NATS_TOKEN"] not in json.dumps(reply)


def test_a_model_of_another_tenant_is_unknown(stack: LocalStack) -> None:
    """The store holds a model this deployment does not serve (FSD_MODELS): it cannot be run,
    and the reply is the one for a model that does not exist."""
    network, images = generate(1024, 2, 4, 0)
    stack.push(network, "other-tenant", [4], images)
    status, reply = ask(stack, model="other-tenant", workers=4, images={"stored": True})
    assert (status, reply["error"]) == (404, "unknown model"), reply
    status, missing = ask(stack, model="no-such-model", workers=4, images={"stored": True})
    assert (status, missing["detail"]) == (404, "unknown model 'no-such-model'")
    assert reply["detail"] == "unknown model 'other-tenant'"


def test_a_malformed_stored_model_is_502_not_the_callers_fault(stack: LocalStack) -> None:
    """A manifest that fails its checks is the store's problem: 502, never 400 or a 500."""
    store = stack.store()
    key = "models/gc1024/manifest.json"
    original = store.read(key)
    store.write(key, b'{"name": "gc1024", "neurons": "1e9", "layers": -1}')
    try:
        status, reply = ask(stack, model="gc1024", workers=4, images={"stored": True})
    finally:
        store.write(key, original)
    assert (status, reply["error"]) == (502, "malformed model"), reply
    assert "manifest" in reply["detail"]


def test_a_coordinator_with_a_memory_budget_replicates_a_model_that_fits(
    servers_env: Mapping[str, str], shared_net: Network, shared_images: Images
) -> None:
    """FSD_MEMORY_MB (the operator sets it): 2 workers asked for a model that fits one become
    2 replicas of the 1-worker cut, exact; a budget below the whole model makes each worker
    stream its layers from the store, a window at a time, keeping the first ones warm: the next
    request finds them (a hit) and streams only the rest."""
    env = {
        **servers_env,
        "FSD_MODELS": "gc-budget",
        "FSD_MEMORY_MB": "250",  # the 1-worker cut fits with about 48 of its 120 layers
        "PATH": "/usr/bin:/bin",
    }
    with LocalStack(workers=2, env=env) as s:
        s.push(shared_net, "gc-budget", [1], shared_images)
        status, reply = ask(s, model="gc-budget", workers=2, images={"stored": True})
        status2, warm = ask(s, model="gc-budget", workers=2, images={"stored": True})
    assert status == 200, reply
    assert reply["correct"] is True and reply["n_categories"] == 73
    assert reply["parallelism"]["replicas"] == 2 and reply["parallelism"]["partitions"] == 1
    assert 2 <= reply["parallelism"]["window"] < 120
    assert reply["shard_cache"]["hit"] == 0  # cold: every layer streamed
    assert billed_mb(reply) == pytest.approx(250, rel=0.05)  # Lambda priced at the budget
    # warm: the first window - 2 layers kept from the cold run, only the rest streamed
    assert status2 == 200 and warm["correct"] is True, warm
    assert warm["shard_cache"]["hit"] == 2 and warm["shard_cache"]["miss"] == 0


#: FSD_MEMORY_MB values that are no budget: not plain decimals, or no more than what a worker
#: holds before any model (fsd.planner.BASE_MB, 200 MB), or beyond 16 TB
HOSTILE_BUDGETS = [
    "nan", "inf", "-1", "1e3", "0x10", "1_000", "\u0661\u0660\u0660\u0660", "0", "1", "200",
    str(10**30), "16777217",
]  # fmt: skip


@pytest.mark.parametrize("budget", HOSTILE_BUDGETS)
def test_a_hostile_memory_budget_is_not_configured_before_the_store_is_asked(
    budget: str, tmp_path: Path
) -> None:
    """The budget is the function's own setting: one that is no budget refuses every request
    with a JSON 503 naming it, read with the other settings, before any connection."""
    nats, s3, workers = Recorder(NATS_INFO), Recorder(), Recorder()
    env = {
        "FSD_SECRETS_DIR": str(tmp_path),
        "FSD_RUN_KEY": "k" * 48,
        "FSD_MODELS": "gc1024",
        "FSD_NATS_URL": f"nats://{nats.url}",
        "FSD_NATS_TOKEN": "t" * 32,
        "FSD_S3_ENDPOINT": f"http://{s3.url}",
        "AWS_ACCESS_KEY_ID": "budgetaccess",
        "AWS_SECRET_ACCESS_KEY": "s" * 40,
        "FSD_WORKER_URL": f"http://{workers.url}/",
        "FSD_MEMORY_MB": budget,
    }
    body = json.dumps({"model": "gc1024", "workers": 2, "images": {"stored": True}}).encode()
    try:
        status, reply = coordinator_fn.handle_request(body, env)
        connections = [r.count() for r in (nats, s3, workers)]
    finally:
        for r in (nats, s3, workers):
            r.close()
    assert (status, reply["error"]) == (503, "not configured"), reply
    assert reply["detail"].startswith("FSD_MEMORY_MB must be a number in (200, 16777216]")
    assert connections == [0, 0, 0]
