"""A stand-in for Knative Serving's routing and readiness, over kmock's Kubernetes API.

It does what Knative Serving's controllers, activator and queue-proxy do for the Services the
operator declares (``serving.knative.dev/v1``), following knative/serving's source (read at
``main``; each rule names the file it copies):

- it watches the Services of one namespace (here: lists them every few milliseconds) and runs
  each one's container as a process of the template's entry (``template/fsd-python3-http/
  index.py``, the image's own, as tests/k8s/function_host.py does for OpenFaaS), serving
  ``functions/<role>`` (the ``fsd.dev/role`` label);
- the container's environment is its ``env`` (``value`` only; in-cluster addresses mapped to
  local ones) plus what Knative adds: ``PORT`` (``pkg/reconciler/revision/resources/deploy.go``,
  ``makeServingContainer``/``buildUserPortEnv``: the container's port, here a free one since
  every process shares this host) and ``K_SERVICE``, ``K_CONFIGURATION``, ``K_REVISION``
  (``getKnativeEnvVar``); the process is started *without* ``--port``, so it must listen on
  ``PORT`` as the image's server does in a Knative pod;
- its secrets: the ``projected`` volume's ``secret`` sources (key -> path) as files of the
  mount, read from the API's Secrets; a Secret that does not exist leaves its files missing;
- what the webhook would refuse is recorded in :attr:`KnativeStandIn.rejected` (and the Service
  is not run): a reserved env name (``PORT``, ``K_SERVICE``, ``K_CONFIGURATION``,
  ``K_REVISION``: ``pkg/apis/serving/k8s_validation.go``, ``reservedEnvVars``), more than one
  port, a secret or projected volume mounted read-write (``validateVolumeMounts``), a
  ``containerConcurrency`` outside 0..1000 or ``timeoutSeconds`` above 600
  (``pkg/apis/config/defaults.go``: ``container-concurrency-max-limit``,
  ``max-revision-timeout-seconds``), a scale annotation that is not a whole number or a
  ``min-scale`` above ``max-scale`` (``pkg/apis/autoscaling/annotation_validation.go``);
- a changed template (or a changed secret value) is a new Revision: the process restarts;
- status (``pkg/apis/serving/v1/service_lifecycle.go``): ``observedGeneration`` the Service's
  generation, conditions ``ConfigurationsReady``, ``RoutesReady`` and ``Ready`` (True once the
  process answers its health path, Unknown before), ``latestCreatedRevisionName`` /
  ``latestReadyRevisionName`` ``<name>-<generation as 5 digits>``, ``address.url``
  ``http://<name>.<namespace>.svc.cluster.local`` and ``url``: the same for a
  ``networking.knative.dev/visibility: cluster-local`` Service, else where the ingress serves it,
  here a local port (``http://127.0.0.1:<port>``, the stand-in's ingress for that host);
- routing: each Service has its route (a local port; the in-cluster address is mapped to it for
  the processes, as cluster DNS would); a route whose Service is gone answers 404; a request
  waits for a ready process (the activator holds it, bounded by ``timeoutSeconds``), then goes
  through a breaker of ``containerConcurrency`` slots with a queue ten times as deep, and 503
  "pending request queue full" beyond it (``pkg/queue/breaker.go``, ``pkg/queue/handler.go``,
  ``pkg/queue/sharedmain/main.go`` ``buildBreaker``); an answer not started within
  ``timeoutSeconds`` is a 504 "request timeout" (``pkg/http/handler/timeout.go``), an upstream
  that cannot be reached a 502.

What it cannot cover: pods and replicas (one process per Service, whatever ``min-scale``/
``max-scale`` say: no autoscaler, no scale to zero or cold start, no ``activation-scale``), the
activator's load balancing across pods, the queue-proxy's probes and draining, the image
(of-watchdog in front of index.py, its timeouts), ``readOnlyRootFilesystem``, resources, the
ingress (Kourier/Istio) and real DNS, TLS, traffic splitting between Revisions, and the
webhook's other defaults and checks. tests/e2e/ has no Knative cluster; docs/deploy-knative.md
says what was not run.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fsd import lifetime
from fsd.localstack import INDEX, FunctionServer
from function_host import HOP_BY_HOP, LocalFunctionHost

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.knative.dev", "v1", "services"
RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
MAX_CONCURRENCY = 1000  # container-concurrency-max-limit
MAX_TIMEOUT = 600  # max-revision-timeout-seconds
DEFAULT_TIMEOUT = 300  # revision-timeout-seconds
VISIBILITY = "networking.knative.dev/visibility"
_SCALE = re.compile(r"autoscaling\.knative\.dev/(min|max|activation|initial)-scale")


class PortServer(FunctionServer):
    """The template's entry started as a Knative container: its port in ``PORT``, no flag."""

    def __init__(self, name: str, handler: Path, env: dict[str, str], port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log_path = Path(env["FSD_STACK_DIR"]) / f"{name}.log"
        cmd = [sys.executable, str(INDEX), "--handler", str(handler)]
        with open(self.log_path, "ab") as fh:
            self.proc = subprocess.Popen(
                cmd,
                env={**env, "PORT": str(port), "FSD_BIND": "127.0.0.1"},
                stdout=fh,
                stderr=subprocess.STDOUT,
                preexec_fn=lifetime.preexec_die_with_parent(),  # noqa: PLW1509 (only prctl)
            )


class _Pods(LocalFunctionHost):
    def start(self, name: str, handler: Path, env: dict[str, str], port: int) -> FunctionServer:
        env.pop("FSD_PORT", None)  # a Knative container gets PORT, nothing else
        return PortServer(name, handler, env, port)


def address(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local"


class _Route:
    """One Service's route: its ingress port, breaker and timeout (set from its Revision)."""

    def __init__(self, standin: KnativeStandIn, name: str) -> None:
        self.name = name
        self.concurrency = 0
        self.timeout = float(DEFAULT_TIMEOUT)
        self.lock = threading.Lock()
        self.pending = 0
        self.slots: threading.Semaphore | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin, self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def configure(self, concurrency: int, timeout: float) -> None:
        with self.lock:
            if concurrency != self.concurrency:
                self.concurrency = concurrency
                self.slots = threading.Semaphore(concurrency) if concurrency else None
            self.timeout = timeout

    def admit(self) -> tuple[threading.Semaphore | None, float] | None:
        """A place in the breaker's queue (None: full); the caller releases it."""
        with self.lock:
            if self.concurrency and self.pending >= self.concurrency * 11:  # slots + 10x queue
                return None
            self.pending += 1
            return self.slots, self.timeout

    def leave(self) -> None:
        with self.lock:
            self.pending -= 1

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class KnativeStandIn:
    """Knative Serving for the Services of ``namespace`` in the API at ``api_url``.

    ``addresses`` maps in-cluster addresses to local ones for the processes (NATS, S3); the
    Services' own in-cluster addresses are added as their routes appear.
    """

    def __init__(
        self,
        api_url: str,
        namespace: str,
        addresses: dict[str, str],
        *,
        interval: float = 0.05,
    ) -> None:
        import kubernetes  # type: ignore[import-untyped,unused-ignore]

        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api_url))
        self._custom = kubernetes.client.CustomObjectsApi(api)
        self._core = kubernetes.client.CoreV1Api(api)
        self.namespace = namespace
        self.addresses = addresses
        self.pods = _Pods(addresses, timeout=float(MAX_TIMEOUT))
        self.routes: dict[str, _Route] = {}
        self.rejected: list[tuple[str, str]] = []  # (service, why) the webhook would refuse
        self.statuses: dict[str, dict[str, Any]] = {}
        self._served: dict[str, dict[str, Any]] = {}  # name -> the Service as last seen
        self._interval = interval
        self._stop = threading.Event()
        self._failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="knative", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KnativeStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for route in self.routes.values():
            route.stop()
        self.pods.close()
        if self._failed:
            raise RuntimeError(f"the Knative stand-in failed: {self._failed[0]!r}")

    def __enter__(self) -> KnativeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def names(self) -> list[str]:
        return self.pods.names

    def route(self, name: str) -> _Route:
        """``name``'s route, made on first use (a process may name a Service not made yet)."""
        if name not in self.routes:
            self.routes[name] = _Route(self, name)
            self.addresses[address(name, self.namespace)] = self.routes[name].url
        return self.routes[name]

    # -- the controller ----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception as exc:  # reported by stop(); the tests' clean-up sees it
                log.exception("the Knative stand-in failed")
                self._failed.append(exc)
                return
            self._stop.wait(self._interval)

    def _reconcile(self) -> None:
        listed: Any = self._custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        services = {s["metadata"]["name"]: s for s in listed.get("items", [])}
        secrets = {
            str(s.metadata.name if s.metadata else ""): {
                k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()
            }
            for s in self._core.list_namespaced_secret(self.namespace).items
        }
        for name in [n for n in self._served if n not in services]:  # deleted
            del self._served[name]
            self.statuses.pop(name, None)
            self.pods.removed(name)
        for name, service in services.items():
            self._serve(name, service, secrets)

    def _serve(
        self, name: str, service: dict[str, Any], secrets: dict[str, dict[str, str]]
    ) -> None:
        meta = service["metadata"]
        generation = int(meta.get("generation") or 1)
        template = service.get("spec", {}).get("template", {})
        revision = f"{name}-{generation:05d}"
        why = _refused(template)
        if why:
            if (name, why) not in self.rejected:
                self.rejected.append((name, why))
            return
        spec = template.get("spec", {})
        (container,) = spec["containers"]
        route = self.route(name)
        route.configure(
            int(spec.get("containerConcurrency") or 0),
            float(spec.get("timeoutSeconds") or DEFAULT_TIMEOUT),
        )
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}
        env |= {"K_SERVICE": name, "K_CONFIGURATION": name, "K_REVISION": revision}
        for value in env.values():  # a Service named in the env gets its route (cluster DNS)
            for other in re.findall(
                rf"http://([a-z0-9-]+)\.{self.namespace}\.svc\.cluster\.local", value
            ):
                self.route(other)
        mounted: dict[str, str] = {}
        for volume in spec.get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                ref = source.get("secret") or {}
                data = secrets.get(ref.get("name", ""), {})
                for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                    if item["key"] in data:
                        mounted[item["path"]] = data[item["key"]]
        labels = template.get("metadata", {}).get("labels", {})
        deployment = {
            "service": name,
            "labels": labels,
            "envVars": env,
            "secrets": sorted(mounted),
            "template": template,  # a new template restarts the process (a new Revision)
        }
        self.pods.deployed(deployment, mounted)
        self._served[name] = service
        ready = self.pods.available(name) > 0
        public = meta.get("labels", {}).get(VISIBILITY) != "cluster-local"
        self._report(
            name, service, revision, ready, route.url if public else address(name, self.namespace)
        )

    def _report(
        self, name: str, service: dict[str, Any], revision: str, ready: bool, url: str
    ) -> None:
        generation = int(service["metadata"].get("generation") or 1)
        state = "True" if ready else "Unknown"
        conditions = [
            {"type": kind, "status": state, **({} if ready else {"reason": "Deploying"})}
            for kind in ("ConfigurationsReady", "Ready", "RoutesReady")
        ]
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": conditions,
            "latestCreatedRevisionName": revision,
            "url": url,
            "address": {"url": address(name, self.namespace)},
        }
        if ready:
            status["latestReadyRevisionName"] = revision
        if (
            self.statuses.get(name) == status
            and service.get("status", {}).get("observedGeneration") == generation
        ):
            return
        self._custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )
        self.statuses[name] = status


def _refused(template: Mapping[str, Any]) -> str:
    """Why Knative's webhook would refuse this revision template ("" : it would not)."""
    spec = template.get("spec", {})
    containers = spec.get("containers") or []
    if len(containers) != 1:
        return "exactly one container"
    (container,) = containers
    reserved = RESERVED_ENV & {e.get("name") for e in container.get("env", [])}
    if reserved:
        return f"reserved env {sorted(reserved)}"
    if len(container.get("ports") or []) > 1:
        return "more than one port"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount.get("name"), {})
        if ("secret" in volume or "projected" in volume) and not mount.get("readOnly"):
            return f"volume {mount.get('name')} must be mounted read-only"
    concurrency = spec.get("containerConcurrency", 0)
    if not isinstance(concurrency, int) or not 0 <= concurrency <= MAX_CONCURRENCY:
        return f"containerConcurrency {concurrency!r}"
    timeout = spec.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT:
        return f"timeoutSeconds {timeout!r}"
    scale = {
        m.group(1): v
        for k, v in (template.get("metadata", {}).get("annotations") or {}).items()
        if (m := _SCALE.fullmatch(k))
    }
    if not all(isinstance(v, str) and v.isdigit() for v in scale.values()):
        return f"scale annotations {scale}"
    if (
        "min" in scale
        and "max" in scale
        and int(scale["max"])
        and int(scale["min"]) > int(scale["max"])
    ):
        return "min-scale above max-scale"
    return ""


def _handler(standin: KnativeStandIn, route: _Route) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, headers: Mapping[str, str] = {}) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if not any(k.lower() == "content-type" for k in headers):
                self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if route.name not in standin._served:  # the ingress knows no such host
                self._answer(404, b"")
                return
            admitted = route.admit()
            if admitted is None:  # pkg/queue/breaker.go ErrRequestQueueFull
                self._answer(503, b"pending request queue full\n")
                return
            slots, timeout = admitted
            deadline = time.monotonic() + timeout
            try:
                # the activator holds the request until a pod is ready
                with contextlib.suppress(Exception):
                    standin.pods.wait_available(route.name)
                if slots is not None and not slots.acquire(timeout=timeout):
                    self._answer(504, b"request timeout")
                    return
                try:
                    status, headers, data = _forward(
                        standin.pods, route.name, self.command, self.path,
                        dict(self.headers.items()), body, max(0.1, deadline - time.monotonic()),
                    )  # fmt: skip
                finally:
                    if slots is not None:
                        slots.release()
                self._answer(status, data, headers)
            finally:
                route.leave()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _forward(
    pods: LocalFunctionHost,
    name: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    timeout: float,
) -> tuple[int, dict[str, str], bytes]:
    """The queue-proxy's request to the user container: 504 after ``timeout`` without an
    answer (pkg/http/handler/timeout.go), 502 when it cannot be reached."""
    try:
        port = int(pods.url(name).rstrip("/").rpartition(":")[2])
    except KeyError:
        return 502, {}, b"no container\n"
    sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), data
    except TimeoutError:
        return 504, {}, b"request timeout"
    except (OSError, http.client.HTTPException) as exc:
        return 502, {}, f"{type(exc).__name__}\n".encode()
    finally:
        conn.close()


def register(api: Any, *, secrets: bool = True) -> None:
    """Declare the Knative Service resource (and Secrets, unless the API has its built-in kinds
    already) in kmock's API, as Knative Serving's CRDs would in a cluster (the chart takes them
    as given)."""
    import kmock

    api.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="Service",
        singular="service",
        namespaced=True,
        subresources={"status"},
        verbs={"list", "watch", "get", "create", "patch", "delete"},
    )
    if not secrets:
        return
    api.resources["v1/secrets"] = kmock.ResourceInfo(
        kind="Secret", namespaced=True, verbs={"list", "watch", "get", "create", "patch", "delete"}
    )
