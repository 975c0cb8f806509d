"""Metrics, Pushgateway, timeline plot and Grafana dashboard, against real Prometheus binaries.

The Prometheus and Pushgateway tests start the real Debian binaries (``make install`` installs them
with apt-get when it can); they are skipped, with the reason, only when the binaries are absent.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from fsd import observe, plot
from fsd.cli import main
from fsd.cost import Cost
from fsd.errors import ChannelTimeout, InputError, ModelNotFound, RunAborted, WorkerError
from fsd.k8s.openfaas_latency import last_latency, latency_query
from fsd.metrics import LayerMetrics, RunResult
from fsd.services import pick_ports
from paths import ROOT
from procs import Process as _Process
from procs import binary as _binary
from procs import start_prometheus

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
API_DOC = ROOT / "docs" / "api.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START_TIMEOUT = 15.0
QUERY_TIMEOUT = 30.0


def _model() -> str:
    """A label value no other test uses, so the global registry's series start empty."""
    return f"test-{uuid.uuid4().hex[:8]}"


def _fake_result(workers: int = 3, layers: int = 5, run_id: str = "") -> RunResult:
    rng = np.random.default_rng(7)
    compute = rng.uniform(0.001, 0.01, (workers, layers))
    comm = rng.uniform(0.0001, 0.005, (workers, layers))
    return RunResult(
        categories=np.array([1, 2, 3]),
        row_sums=np.array([1.0, 2.0, 3.0]),
        seconds=float((compute + comm).sum(axis=1).max()),
        images=10,
        edges=1000,
        workers=workers,
        channel="nats",
        partition="contiguous",
        dtype="float32",
        bytes_sent=123_456,
        messages=42,
        activation_bytes=100_000,
        planned_volume=500,
        comm_share=float(comm.sum() / (compute.sum() + comm.sum())),
        plan_seconds=0.01,
        per_layer=[
            LayerMetrics(k + 1, float(compute[:, k].max()), float(comm[:, k].max()), 1000)
            for k in range(layers)
        ],
        cost=Cost(total_usd=1.25e-6),
        worker_compute=compute,
        worker_comm=comm,
        run_id=run_id or uuid.uuid4().hex,
    )


def _value(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        body: bytes = response.read()
    return body.decode()


# -- unit: the default registry --------------------------------------------------------------


def test_observe_request_fills_histogram() -> None:
    model = _model()
    labels = {"function": "worker", "model": model, "channel": "s3"}
    for seconds in (0.003, 0.2, 4.0):
        observe.observe_request("worker", model, "s3", seconds)
    assert _value("fsd_request_seconds_count", labels) == 3
    assert _value("fsd_request_seconds_sum", labels) == pytest.approx(4.203)
    assert _value("fsd_request_seconds_bucket", {**labels, "le": "0.005"}) == 1
    assert _value("fsd_request_seconds_bucket", {**labels, "le": "0.25"}) == 2
    assert _value("fsd_request_seconds_bucket", {**labels, "le": "600.0"}) == 3


def test_observe_error_counts_by_kind() -> None:
    labels = {"function": "coordinator", "kind": "invalid_request"}
    before = _value("fsd_errors_total", labels)
    observe.observe_error("coordinator", "invalid request")  # the error code of the reply
    observe.observe_error("coordinator", InputError("workers: 0 < 1"))
    assert _value("fsd_errors_total", labels) == before + 2


def _error_labels() -> set[tuple[str, str]]:
    return {
        (sample.labels["function"], sample.labels["kind"])
        for family in REGISTRY.collect()
        if family.name == "fsd_errors"
        for sample in family.samples
        if sample.name == "fsd_errors_total"
    }


class _Strange(Exception):
    """An exception fsd does not know."""


def test_error_kinds_are_a_closed_set() -> None:
    """Whatever a caller passes (a message, a request's text, any exception), the errors
    counter only ever carries known kinds and functions: its cardinality is bounded."""
    hostile = [
        f"timeout-{uuid.uuid4().hex}",
        'invalid_request"} 1\nfsd_evil_total 1',
        "x" * 100_000,
        "",
        "worker failed: worker 3 failed: detail",
        "__class__",
    ]
    for text in hostile:
        observe.observe_error("coordinator", text)
        observe.observe_error(text or "empty", "worker failed")  # the function label is bounded too
    labels = _error_labels()
    assert {kind for _, kind in labels} <= set(observe.ERROR_KINDS)
    assert {function for function, _ in labels} <= {*observe.FUNCTIONS, "other"}
    for exc in (ValueError("a message"), _Strange(f"{uuid.uuid4()}"), KeyError("k")):
        observe.observe_error("worker", exc)
    assert {kind for _, kind in _error_labels()} <= set(observe.ERROR_KINDS)
    assert all(observe.error_kind(text) is observe.ErrorKind.OTHER for text in hostile)


def test_error_kinds_follow_fsd_errors_and_the_api() -> None:
    """Exceptions map along their class hierarchy; every documented error code has a kind."""
    kind, of = observe.error_kind, observe.ErrorKind
    assert kind(ChannelTimeout("late", [1])) is of.WORKER_TIMED_OUT
    assert kind(RunAborted("gave up")) is of.WORKER_FAILED
    assert kind(WorkerError(2, "boom")) is of.WORKER_FAILED
    assert kind(ModelNotFound("no gc9")) is of.UNKNOWN_MODEL
    assert kind("WorkerError") is of.WORKER_FAILED  # type(exc).__name__, as callers pass
    assert kind("NotConfigured") is of.NOT_CONFIGURED
    assert kind("malformed_JSON") is of.MALFORMED_JSON  # reply["error"].replace(" ", "_")
    rows = re.findall(r"^\| \d{3} \| ([^|]*)\|", API_DOC.read_text(), re.MULTILINE)
    codes = {code for row in rows for code in re.findall(r"`([^`]+)`", row)}
    assert {"invalid request", "worker timed out", "replayed invocation"} <= codes
    for code in codes:
        assert kind(code) is not of.OTHER, f"docs/api.md error {code!r} has no kind"


def test_shard_load_by_cache() -> None:
    model = _model()
    observe.observe_shard_load(model, hit=True, seconds=0.002)
    observe.observe_shard_load(model, hit=False, seconds=1.5)
    observe.observe_shard_load(model, hit=False, seconds=2.0)
    assert _value("fsd_shard_load_seconds_count", {"model": model, "cache": "hit"}) == 1
    assert _value("fsd_shard_load_seconds_count", {"model": model, "cache": "miss"}) == 2
    assert _value("fsd_shard_load_seconds_sum", {"model": model, "cache": "miss"}) == 3.5


def test_observe_run_fills_layer_histograms_and_totals() -> None:
    model = _model()
    result = _fake_result(workers=3, layers=5)
    observe.observe_run(result, model)
    for w in range(3):
        labels = {"model": model, "channel": "nats", "worker": str(w)}
        assert _value("fsd_layer_compute_seconds_count", labels) == 5
        assert _value("fsd_layer_compute_seconds_sum", labels) == pytest.approx(
            result.worker_compute[w].sum()
        )
        assert _value("fsd_layer_comm_seconds_sum", labels) == pytest.approx(
            result.worker_comm[w].sum()
        )
    everyone = {"model": model, "channel": "nats", "worker": "all"}
    assert _value("fsd_bytes_total", everyone) == 123_456
    assert _value("fsd_messages_total", everyone) == 42


def test_observe_run_counts_per_worker_when_known() -> None:
    model = _model()
    result = _fake_result(workers=2, layers=3)
    vars(result)["worker_bytes"] = np.array([[10, 20, 30], [1, 2, 3]])  # (workers, layers)
    vars(result)["worker_messages"] = np.array([4, 5])  # (workers,)
    observe.observe_run(result, model)
    assert _value("fsd_bytes_total", {"model": model, "channel": "nats", "worker": "0"}) == 60
    assert _value("fsd_bytes_total", {"model": model, "channel": "nats", "worker": "1"}) == 6
    assert _value("fsd_messages_total", {"model": model, "channel": "nats", "worker": "1"}) == 5
    assert REGISTRY.get_sample_value(
        "fsd_bytes_total", {"model": model, "channel": "nats", "worker": "all"}
    ) is None  # fmt: skip


BASE_UNITS = frozenset({"seconds", "bytes", "ratio", "usd"})
COUNTS = frozenset({"fsd_run_messages", "fsd_run_frames_rejected"})
"""Gauges that count things: no unit (Prometheus: "_total" is for counters only)."""


def _families(registry: Collector) -> list[Any]:
    return [f for f in registry.collect() if f.name.startswith("fsd_")]


def _all_fsd_families() -> list[Any]:
    observe.observe_run(_fake_result(), _model())  # every labelled family has a sample
    observe.observe_error("worker", "worker failed")
    observe.observe_shard_load(_model(), hit=True, seconds=0.1)
    observe.observe_request("worker", _model(), "nats", 0.1)
    return _families(REGISTRY) + _families(observe._run_registry(_fake_result(), "m"))


def test_every_metric_follows_prometheus_naming() -> None:
    """https://prometheus.io/docs/practices/naming/: counters end in _total, a unit is a base
    unit and ends the name, and a unitless 0..1 share is a _ratio."""
    families = _all_fsd_families()
    names = {f.name for f in families}
    assert len(names) == len(observe.METRIC_NAMES), names
    for family in families:
        name, kind, unit = family.name, family.type, family.unit
        samples = {s.name for s in family.samples} - {f"{name}_created"}
        if kind == "counter":
            assert samples == {f"{name}_total"}, name
            assert f"{name}_total" in observe.METRIC_NAMES, name
        else:
            assert name in observe.METRIC_NAMES, name
            assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name
        if unit:
            assert unit in BASE_UNITS and name.endswith(f"_{unit}"), (name, unit)
        else:  # no unit: a count of things, never a share or an amount
            assert kind == "counter" or name in COUNTS, f"{name} ({kind}) declares no unit"
            assert not name.endswith(tuple(f"_{u}" for u in BASE_UNITS)), name
    assert "fsd_run_comm_share_ratio" in names
    promtool = shutil.which("promtool")  # Prometheus' own linter, where installed
    if promtool is not None:
        fsd_only = CollectorRegistry()
        for family in families:
            fsd_only.register(_Fixed(family))
        exposition = generate_latest(fsd_only)
        command = [promtool, "check", "metrics"]
        done = subprocess.run(
            command, input=exposition, capture_output=True, timeout=60, check=False
        )
        assert done.returncode == 0, (done.stdout + done.stderr).decode()


class _Fixed(Collector):
    """One already-collected family, to expose a chosen subset of families."""

    def __init__(self, family: Any) -> None:
        self.family = family

    def collect(self) -> Iterator[Any]:
        yield self.family


def test_push_to_unreachable_gateway_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = pick_ports(1)  # free: nothing listens there
    gateway = f"http://fsd:pa55word@127.0.0.1:{port}"  # credentials must never reach a log
    with caplog.at_level(logging.DEBUG, logger="fsd.observe"):
        pushed = observe.push_run(_fake_result(), "m", gateway, timeout=2)
    assert pushed is False
    assert any(
        r.levelno == logging.WARNING and "Pushgateway" in r.getMessage() for r in caplog.records
    )
    assert "pa55word" not in caplog.text


# -- real Prometheus scraping a test server --------------------------------------------------


# What the OpenFaaS gateway exposes about the functions it proxies (openfaas/faas at 8d803bf:
# gateway/metrics/metrics.go: histogram gateway_functions_seconds{function_name, code}; observed in
# gateway/handlers/notifiers.go with function_name "<name>.<namespace>"), served next to fsd's
# metrics so the real Prometheus scrapes it and evaluates fsd.k8s.openfaas_latency's PromQL.
GATEWAY = CollectorRegistry()
GATEWAY_SECONDS = Histogram(
    "gateway_functions_seconds", "Function time taken", ["function_name", "code"], registry=GATEWAY
)
GATEWAY_LOCK = threading.Lock()  # a scrape sees whole batches of observations, never half of one


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        with GATEWAY_LOCK:
            body = generate_latest(REGISTRY) + generate_latest(GATEWAY)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[int]:
    """Serves the default registry at http://127.0.0.1:<port>/metrics, as the functions do."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, metrics_server: int) -> Iterator[int]:
    """A real Prometheus scraping ``metrics_server`` every second; yields its port."""
    folder = tmp_path_factory.mktemp("prometheus")
    process, port = start_prometheus(folder, [f"127.0.0.1:{metrics_server}"])
    try:
        yield port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway, empty; yields its URL.

    Metrics in memory only: Debian's build persists to /var/lib/prometheus/pushgateway.data by
    default, which every run on the machine would share (and start with).
    """
    binary = _binary("prometheus-pushgateway", "pushgateway")
    (port,) = pick_ports(1)
    url = f"http://127.0.0.1:{port}"
    process = _Process(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        tmp_path_factory.mktemp("pushgateway") / "pushgateway.log",
        f"{url}/-/ready",
    )
    try:
        yield url
    finally:
        process.stop()


def _expected_quantile(q: float, values: list[float], buckets: tuple[float, ...]) -> float:
    """What PromQL's histogram_quantile computes: linear interpolation inside the bucket."""
    counts = [sum(v <= b for v in values) for b in buckets]
    rank = q * len(values)
    i = next(i for i, c in enumerate(counts) if c >= rank)
    lower, below = (buckets[i - 1], counts[i - 1]) if i else (0.0, 0)
    return lower + (buckets[i] - lower) * (rank - below) / (counts[i] - below)


def test_prometheus_computes_request_median(prometheus: int) -> None:
    model = _model()
    values = np.linspace(0.01, 1.0, 31).tolist()  # odd count: the true median is one value
    for seconds in values:
        observe.observe_request("coordinator", model, "local", seconds)
    median = float(np.median(values))
    buckets = observe.REQUEST_BUCKETS
    hi = next(b for b in buckets if median <= b)
    lo = max((b for b in buckets if b < median), default=0.0)
    query = f'histogram_quantile(0.5, sum by (le) (fsd_request_seconds_bucket{{model="{model}"}}))'
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline = time.monotonic() + QUERY_TIMEOUT
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = json.loads(_get(url))
        result = answer.get("data", {}).get("result", [])
        if answer.get("status") == "success" and result:
            estimate = float(result[0]["value"][1])
            if not math.isnan(estimate):
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"no numeric median from Prometheus in {QUERY_TIMEOUT} s: {answer}")
    assert lo < estimate <= hi, f"median {median} is in ({lo}, {hi}], Prometheus said {estimate}"
    assert estimate == pytest.approx(_expected_quantile(0.5, values, buckets), rel=1e-6)


def test_prometheus_accepts_dashboard_queries(prometheus: int) -> None:
    """Every dashboard expression, its Grafana variables filled in, is valid PromQL."""
    dashboard = json.loads(DASHBOARD.read_text())
    fill = {"$__rate_interval": "1m", "$model": ".*", "$channel": ".*"}
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in fill.items():
                expr = expr.replace(var, value)
            url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode(
                {"query": expr}
            )
            try:
                answer = json.loads(_get(url))
            except urllib.error.HTTPError as exc:  # 400: bad_data, the query does not parse
                pytest.fail(f"panel {panel['title']!r}: {expr!r}: {exc.read().decode()}")
            assert answer["status"] == "success", (panel["title"], answer)


def _query(prometheus: int, query: str) -> list[Any]:
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    answer = json.loads(_get(url))
    assert answer["status"] == "success", answer
    result: list[Any] = answer["data"]["result"]
    return result


def _wait_for(what: str, check: Any, every: Any = None) -> Any:
    """Poll ``check()`` until it is not None (calling ``every()`` between tries)."""
    deadline = time.monotonic() + QUERY_TIMEOUT
    while time.monotonic() < deadline:
        if every is not None:
            every()
        found = check()
        if found is not None:
            return found
        time.sleep(0.3)
    pytest.fail(f"{what}: nothing in {QUERY_TIMEOUT} s")


def test_last_latency_from_real_prometheus(prometheus: int) -> None:
    """The mean over the gateway's histogram, summed over codes, of this function only."""
    function, namespace = f"gc{uuid.uuid4().hex[:6]}-default-coordinator", "openfaas-fn"
    url = f"http://127.0.0.1:{prometheus}"
    assert last_latency(url, function, namespace, timeout=5) is None  # never invoked

    def traffic() -> None:
        with GATEWAY_LOCK:  # per batch: mean (0.25 + 0.75) / 2 = 0.5
            GATEWAY_SECONDS.labels(f"{function}.{namespace}", "200").observe(0.25)
            GATEWAY_SECONDS.labels(f"{function}.{namespace}", "500").observe(0.75)
            GATEWAY_SECONDS.labels(f"{function}.default", "200").observe(9.0)  # other namespace
            GATEWAY_SECONDS.labels(f"{function}x.{namespace}", "200").observe(7.0)  # other name
            GATEWAY_SECONDS.labels(function, "200").observe(5.0)  # no namespace

    latency = _wait_for(
        "a latency from Prometheus",
        lambda: last_latency(url, function, namespace, timeout=5),
        traffic,
    )
    assert latency == pytest.approx(0.5, rel=1e-9)


def test_last_latency_none_without_recent_traffic(prometheus: int) -> None:
    """A function with series but no request in the window: 0/0 is NaN to Prometheus, None here."""
    function, namespace = f"gc{uuid.uuid4().hex[:6]}-default-coordinator", "team-a"
    with GATEWAY_LOCK:
        GATEWAY_SECONDS.labels(f"{function}.{namespace}", "200").observe(0.5)
    label = f'function_name="{function}.{namespace}"'
    _wait_for(  # Prometheus has scraped the unchanged count at least twice
        "two scrapes",
        lambda: (
            _query(
                prometheus, f"count_over_time(gateway_functions_seconds_count{{{label}}}[5m]) >= 2"
            )
            or None
        ),
    )
    assert _query(prometheus, latency_query(function, namespace))[0]["value"][1] == "NaN"
    assert last_latency(f"http://127.0.0.1:{prometheus}", function, namespace, timeout=5) is None


def test_last_latency_unreachable_prometheus(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = pick_ports(1)  # nothing listens there
    with caplog.at_level(logging.DEBUG, logger="fsd.k8s.openfaas_latency"):
        found = last_latency(f"http://op:s3cret@127.0.0.1:{port}", "f", "ns", timeout=2)
    assert found is None
    assert "s3cret" not in caplog.text
    for url in ("", "prometheus:9090", "ftp://127.0.0.1/", "http://[::1/", "http://h:99999"):
        assert last_latency(url, "f", "ns", timeout=2) is None


class _HostilePrometheus(BaseHTTPRequestHandler):
    """A stand-in for a Prometheus answering oddly: no real Prometheus can be made to (its answers
    are well-formed), and the operator must survive a wrong URL or a proxy in between."""

    answer: bytes = b""
    status = 200
    trickle = False
    seen: list[str] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.path)
        self.send_response(self.status)
        if self.status in (301, 302):
            self.send_header("Location", "http://127.0.0.1:9/api/v1/query")
        self.send_header("Content-Type", "application/json")
        if self.trickle:  # headers, then a byte now and then for ever
            self.end_headers()
            try:
                for _ in range(200):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[tuple[str, type[_HostilePrometheus]]]:
    handler = type("Handler", (_HostilePrometheus,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _vector(*values: Any) -> bytes:
    result = [{"metric": {}, "value": [1767225600.0, v]} for v in values]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


def test_last_latency_reads_a_plain_answer(hostile: tuple[str, type[_HostilePrometheus]]) -> None:
    """The stand-in's well-formed answer is read (so the None answers below mean refusal)."""
    url, handler = hostile
    handler.answer = _vector("0.125")
    assert last_latency(url, "gc1024-default-coordinator", "openfaas-fn", timeout=2) == 0.125
    (path,) = handler.seen
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["query"]
    assert query == [latency_query("gc1024-default-coordinator", "openfaas-fn")]
    assert 'function_name="gc1024-default-coordinator.openfaas-fn"' in query[0]


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, b"not json"),
        (200, b"[" * 100_000 + b"]" * 100_000),  # too big, and too deep
        (200, b"[" * 10_000 + b"]" * 10_000),  # too deep for json
        (200, _vector("0.1") + b" " * 70_000),  # too big
        (200, b'{"status": "error", "errorType": "bad_data", "error": "x"}'),
        (200, b'{"status": "success", "data": {"resultType": "matrix", "result": []}}'),
        (200, b'{"status": "success", "data": {"resultType": "vector", "result": {}}}'),
        (200, b'{"status": "success", "data": []}'),
        (200, b"null"),
        (200, _vector()),
        (200, _vector("0.1", "0.2")),
        (200, _vector("NaN")),
        (200, _vector("+Inf")),
        (200, _vector("1e999")),
        (200, _vector("-0.5")),
        (200, _vector(0.5)),  # a number, not Prometheus' string
        (200, _vector(None)),
        (200, _vector([1, 2])),
        (
            200,
            json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}}
            ).encode(),
        ),
        (
            200,
            json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": ["x"]}}
            ).encode(),
        ),
        (500, _vector("0.1")),
        (302, _vector("0.1")),  # a redirect is not followed
    ],
)
def test_last_latency_refuses_odd_answers(
    hostile: tuple[str, type[_HostilePrometheus]], status: int, answer: bytes
) -> None:
    url, handler = hostile
    handler.status, handler.answer = status, answer
    assert last_latency(url, "gc1024-default-coordinator", "openfaas-fn", timeout=2) is None


def test_last_latency_gives_up_on_a_trickle(hostile: tuple[str, type[_HostilePrometheus]]) -> None:
    url, handler = hostile
    handler.trickle = True
    assert last_latency(url, "gc1024-default-coordinator", "openfaas-fn", timeout=0.5) is None


@pytest.mark.parametrize(
    ("function", "namespace"),
    [
        ('x"}[5m])) or vector(1) #', "openfaas-fn"),
        ("gc1024-default-coordinator", 'ns"} or vector(1)'),
        ("Upper", "openfaas-fn"),
        ("a" * 64, "openfaas-fn"),
        ("", "openfaas-fn"),
        ("f", ""),
    ],
)
def test_last_latency_asks_nothing_for_a_bad_name(
    hostile: tuple[str, type[_HostilePrometheus]], function: str, namespace: str
) -> None:
    """A name that is not a Kubernetes name never reaches PromQL."""
    url, handler = hostile
    handler.answer = _vector("1.0")
    assert last_latency(url, function, namespace, timeout=2) is None
    assert handler.seen == []


# -- real Pushgateway ------------------------------------------------------------------------


def _pushed(gateway: str, model: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Series pushed for ``model``: name -> {sorted labels, less those the gateway adds: value}."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(_get(f"{gateway}/metrics")):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name.startswith("fsd_"):
                labels = {k: v for k, v in sample.labels.items() if k not in ("job", "instance")}
                found.setdefault(sample.name, {})[tuple(sorted(labels.items()))] = sample.value
    return found


def _groups(gateway: str, model: str) -> list[dict[str, str]]:
    """The grouping keys of the groups holding series of ``model`` (GET /api/v1/metrics)."""
    answer = json.loads(_get(f"{gateway}/api/v1/metrics"))
    assert answer["status"] == "success", answer
    return [
        group["labels"]
        for group in answer["data"]
        if any(
            series["labels"].get("model") == model
            for family in group.values()
            if isinstance(family, dict) and "metrics" in family
            for series in family["metrics"]
        )
    ]


def test_push_run_to_real_pushgateway(pushgateway: str) -> None:
    model = _model()
    result = _fake_result(workers=2, layers=4, run_id=f"run{uuid.uuid4().hex[:12]}")
    assert observe.push_run(result, model, pushgateway) is True
    series = _pushed(pushgateway, model)
    common = (("channel", "nats"), ("model", model), ("partition", "contiguous"),
              ("workers", "2"))  # fmt: skip
    assert series["fsd_run_seconds"] == {common: pytest.approx(result.seconds)}
    assert series["fsd_run_bytes"] == {common: 123_456}
    assert series["fsd_run_messages"] == {common: 42}
    assert series["fsd_run_cost_usd"] == {common: pytest.approx(1.25e-6)}
    assert series["fsd_run_comm_share_ratio"] == {common: pytest.approx(result.comm_share)}
    assert "fsd_run_comm_share" not in series
    layers = series["fsd_run_layer_compute_seconds"]
    assert len(layers) == 4
    assert layers[tuple(sorted((*common, ("layer", "3"))))] == pytest.approx(
        result.per_layer[2].compute_s
    )
    assert len(series["fsd_run_layer_comm_seconds"]) == 4


def test_pushgateway_groups_stay_bounded(pushgateway: str) -> None:
    """N runs of one configuration leave one group, holding the last run (the Pushgateway
    forgets nothing, so a group per run id would grow forever); no run id becomes a label."""
    model = f"{_model()}/with slash"  # a directory-like model name goes through the URL too
    runs = [_fake_result(workers=2, layers=3) for _ in range(6)]
    for i, result in enumerate(runs):
        result.seconds = 1.0 + i
        assert observe.push_run(result, model, pushgateway) is True
    other = _fake_result(workers=3, layers=3)  # another configuration: its own group
    assert observe.push_run(other, model, pushgateway) is True
    groups = _groups(pushgateway, model)
    assert len(groups) == 2, groups
    assert all("run_id" not in g for g in groups)
    assert {g["workers"] for g in groups} == {"2", "3"}
    series = _pushed(pushgateway, model)
    seconds = {
        dict(labels)["workers"]: value for labels, value in series["fsd_run_seconds"].items()
    }
    assert seconds == {"2": 6.0, "3": pytest.approx(other.seconds)}  # the last run of each
    exposed = _get(f"{pushgateway}/metrics")
    assert not any(r.run_id in exposed for r in [*runs, other])


# -- timeline plot and the CLI ---------------------------------------------------------------


def test_segments_are_consecutive() -> None:
    compute_starts, comm_starts = plot._segments(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0, 1]))
    assert compute_starts.tolist() == [0.0, 1.5, 3.5]
    assert comm_starts.tolist() == [1.0, 3.5, 6.5]


def test_timeline_writes_png(tmp_path: Path) -> None:
    out = plot.timeline(_fake_result(workers=4, layers=6), tmp_path / "run.png", "neuron1024")
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_timeline_without_matplotlib_hints_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(InputError, match=r"pip install 'fsd\[plot\]'"):
        plot.timeline(_fake_result(), tmp_path / "run.png")
    with pytest.raises(InputError, match=r"pip install 'fsd\[plot\]'"):
        plot.check_available()


def test_timeline_bad_path_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write plot"):
        plot.timeline(_fake_result(), tmp_path / "missing" / "run.png")


def test_cli_plot_and_pushgateway(
    tmp_path: Path,
    pushgateway: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FSD_PUSHGATEWAY", pushgateway)
    out = tmp_path / "t.png"
    code = main(["run", "--neurons", "256", "--layers", "4", "--images", "20", "--workers", "2",
                 "--plot", str(out), "--json"])  # fmt: skip
    assert code == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    series = _pushed(pushgateway, "generated")
    ((labels, seconds),) = series["fsd_run_seconds"].items()
    assert dict(labels)["workers"] == "2" and seconds == pytest.approx(report["seconds"], abs=1e-6)
    assert len(series["fsd_run_layer_compute_seconds"]) == 4


@pytest.mark.parametrize("name", ["missing/t.png", "t.txt"])
def test_cli_bad_plot_path_exits_2_before_running(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.perf_counter()
    code = main(["run", "--neurons", "256", "--layers", "4", "--images", "20", "--workers", "2",
                 "--plot", str(tmp_path / name)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("fsd: error:") and "plot" in err
    assert time.perf_counter() - t0 < 2  # rejected before the inference


# -- Grafana dashboard -----------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def test_grafana_dashboard_queries_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    graphs = [p for p in _panels(dashboard["panels"]) if p.get("type") != "row"]
    assert len(graphs) >= 5
    used: set[str] = set()
    for panel in graphs:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = {n for n in observe.METRIC_NAMES if n in target["expr"]}
            assert names, f"panel {panel['title']!r}: {target['expr']!r} uses no fsd metric"
            used |= names
    default_metrics = set(observe.METRIC_NAMES) - set(observe.RUN_METRICS)
    assert used >= default_metrics, f"no panel for {default_metrics - used}"
    exposed = generate_latest(REGISTRY).decode()
    for name in default_metrics:  # the names exist in what /metrics serves
        assert f"# HELP {name.removesuffix('_total')}" in exposed, name
