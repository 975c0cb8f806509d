"""A stand-in OpenFaaS gateway for the operator tests: a real HTTP server that checks requests.

It serves the gateway's REST API as openfaas/faas documents it (``api-docs/spec.openapi.yml``)
with the rules of OpenFaaS CE's provider, faas-netes (read at openfaas/faas-netes ``master``), and
keeps functions and secrets in memory. Each rule names the upstream file it copies:

- basic auth on ``/system/*`` only; ``/function/*`` is open (openfaas/faas ``gateway/main.go``:
  only the system handlers are wrapped in ``decorateExternalAuth``);
- ``POST /system/functions`` (202) and ``PUT /system/functions`` (202; 404 if absent) take a
  ``FunctionDeployment`` (faas-provider ``types/model.go``): ``envVars``/``labels``/ ``annotations``
  are maps of strings and ``secrets``/``constraints`` lists of strings, else Go's ``json.Unmarshal``
  fails: 400 "failed to unmarshal request" (faas-netes ``pkg/handlers/deploy.go``, ``update.go``;
  :data:`FUNCTION_DEPLOYMENT`, strict here: unknown fields refused too); ``service`` must be a
  DNS-1123 label and ``image`` set, and CE refuses ``com.openfaas.scale.zero: "true"`` and
  ``scale.zero-duration`` (400 "validation failed: ...", ``pkg/handlers/validate.go``), and
  ``com.openfaas.scale.min``/``max`` above 5 (``MaxReplicas``, same file), and a sixteenth function
  (``MaxFunctions``, ``deploy.go``); ``namespace``, when given, must be the gateway's (400
  "namespace must be: ...", ``deploy.go``/``update.go``); every secret named must exist in the
  function namespace (400 "unable to fetch secrets: ...", ``deploy.go`` over ``pkg/k8s/secrets.go``
  ``GetSecrets``); a second ``POST`` of a name fails creating the Deployment (500 "unable create
  Deployment", ``deploy.go``);
- ``DELETE /system/functions`` ``{"functionName"}`` (202; 404 if absent; 400 without a name),
  the ``namespace`` query parameter must be the gateway's (400; ``pkg/handlers/delete.go``);
- ``GET /system/function/{name}`` a ``FunctionStatus`` (404 if absent; ``replicas`` and
  ``availableReplicas`` omitted when 0, faas-provider's ``omitempty``) and ``GET
  /system/functions`` the list; a ``namespace`` query parameter other than the gateway's is a 400
  (``pkg/handlers/replica_reader.go``, ``reader.go``);
- ``/system/secrets`` (``pkg/handlers/secrets.go``, types.Secret ``{name, namespace, value,
  rawValue}`` in faas-provider ``types/secret.go``): ``GET`` lists ``[{name, namespace}]``, never
  values (200); ``POST`` creates (202; 409 if it exists), ``PUT`` replaces (202; 404 if absent),
  ``DELETE`` ``{name}`` removes (202; 404 if absent); a name that is no DNS-1123 subdomain is the
  API server's Invalid (422) and an empty one a plain error (500), as ``ProcessErrorReasons``
  (``pkg/handlers/errors.go``) maps them; the namespace (query for GET, body for the others,
  the gateway's when absent) must be the gateway's: 400 otherwise (``pkg/handlers/namespaces.go``
  ``NewNamespaceResolver``); a body that is not JSON is a 400;
- ``/function/<name>[.<namespace>][/...]``: a function that is not deployed is a 404 "unable to
  find function: <name>" (openfaas/faas ``gateway/handlers/scaling.go``), one without an available
  replica a 503 "No endpoints available for: <name>." (faas-provider ``proxy/proxy.go``).

A :class:`FunctionHost` can be plugged in (``host=``) to run the functions: the gateway tells it
what is deployed (with the values of the secrets it mounts) and removed, asks it how many
replicas are available, and forwards invocations to it. Without one, ``availableReplicas`` is the
function's ``com.openfaas.scale.min`` (0 while :attr:`FakeGateway.hold` is set, or for a name in
:attr:`FakeGateway.idle`: scaled to zero) and an invocation is a 404.

Misbehaviour on demand, for the operator's defences: :attr:`FakeGateway.echo_secrets` refuses
secret writes with a 400 that echoes the request body (as a proxy or a verbose gateway might);
:attr:`FakeGateway.odd_status` answers ``GET /system/function/<name>`` with that JSON instead.

Rejected requests are kept in :attr:`FakeGateway.rejected` so a test can assert that the
operator never sent one; secret values are kept in :attr:`FakeGateway.secrets`.

What it cannot cover: CE's check that the image is pullable anonymously (``deploy.go`` calls
``isAnonymous``, a registry request: here a test lists the images that fail it in
:attr:`FakeGateway.private`; docs/deploy-kubernetes.md has users push public images),
the Deployments, Services and probes faas-netes makes, the autoscaler, and the gateway's
timeouts; tests/e2e/kind.sh runs against the real one.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema

_STRINGS_MAP: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": {"type": "string"},
}
_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_RESOURCES: dict[str, Any] = {
    "type": ["object", "null"],
    "properties": {"memory": {"type": "string"}, "cpu": {"type": "string"}},
    "additionalProperties": False,
}

#: ``components.schemas.FunctionDeployment`` of the gateway's OpenAPI spec, as JSON Schema
#: (strict: unknown fields are refused, which the spec leaves open).
FUNCTION_DEPLOYMENT: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["service", "image"],
    "additionalProperties": False,
    "properties": {
        "service": {"type": "string", "minLength": 1},
        "image": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "envProcess": {"type": "string"},
        "constraints": _STRINGS,
        "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
        "secrets": _STRINGS,
        "labels": _STRINGS_MAP,
        "annotations": _STRINGS_MAP,
        "limits": _RESOURCES,
        "requests": _RESOURCES,
        "readOnlyRootFilesystem": {"type": "boolean"},
        "registryAuth": {"type": "string"},  # deprecated, ignored
        "network": {"type": "string"},  # deprecated, ignored
    },
}

#: ``components.schemas.DeleteFunctionRequest``.
DELETE_FUNCTION: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["functionName"],
    "additionalProperties": False,
    "properties": {"functionName": {"type": "string", "minLength": 1}},
}

_DEPLOYMENT = jsonschema.Draft202012Validator(FUNCTION_DEPLOYMENT)
_DELETE = jsonschema.Draft202012Validator(DELETE_FUNCTION)
#: faas-netes pkg/handlers/validate.go: ``validDNS`` (RFC 1123 label)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Kubernetes' name rule for a Secret (a DNS-1123 subdomain, 253 characters)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: faas-netes CE's limits (pkg/handlers, ``MaxReplicas`` and ``MaxFunctions``), kept here apart
#: from fsd's own copy so the stand-in checks the operator rather than agreeing with it
CE_MAX_REPLICAS = 5
CE_MAX_FUNCTIONS = 15
#: faas-netes' texts, as its handlers format them (``http.Error`` adds the newline):
#: pkg/handlers/deploy.go ``fmt.Errorf("unable to fetch secrets: %s", err.Error())`` over the
#: API server's NotFound (``secrets "<name>" not found``, pkg/k8s/secrets.go ``GetSecrets``)
FETCH_SECRETS = 'unable to fetch secrets: secrets "{name}" not found\n'
#: pkg/handlers/deploy.go (CE, MaxFunctions):
#: ``fmt.Errorf("unable to create function, maximum: %d", MaxFunctions)``
MAX_FUNCTIONS = "unable to create function, maximum: {limit}\n"
#: why a POST of a secret that exists is refused (409 AlreadyExists), as :attr:`rejected` says
CONFLICT = "secret exists"
Reply = tuple[int, Any]


class FunctionHost(Protocol):
    """Runs the deployed functions for the gateway (e.g. the template's entry, locally)."""

    def deployed(self, deployment: dict[str, Any], secrets: dict[str, str]) -> None: ...

    def removed(self, name: str) -> None: ...

    def available(self, name: str) -> int: ...

    def forward(
        self, name: str, method: str, subpath: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]: ...


class FakeGateway:
    """The gateway's function API on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(
        self,
        port: int = 0,
        *,
        user: str = "admin",
        password: str = "secret",
        namespace: str = "openfaas-fn",
        host: FunctionHost | None = None,
    ) -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, str] = {}  # the function namespace's secrets: name -> value
        self.namespace = namespace
        self.host = host
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body) that were valid
        self.rejected: list[tuple[str, str, str]] = []  # (method, path, why)
        self.hold = False  # while True, functions report 0 available replicas
        self.idle: set[str] = set()  # functions scaled to zero (Pro's idler, by hand)
        self.refuse_secrets = 0  # answer this many secret writes 403 (RBAC: Forbidden)
        # images an anonymous pull would not get (CE's isAnonymous, which needs a registry here)
        self.private: set[str] = set()
        self.echo_secrets = False  # refuse secret writes with a 400 echoing the body
        self.odd_status: Any = None  # when set: the JSON of every function status
        self.lock = threading.RLock()
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeGateway:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def calls(self, method: str, service: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the valid ``method`` requests to /system/functions (for ``service``)."""
        with self.lock:
            bodies = [b for m, p, b in self.requests if m == method and p == "/system/functions"]
        if service is None:
            return bodies
        key = "functionName" if method == "DELETE" else "service"
        return [b for b in bodies if b.get(key) == service]

    def adopt(self, deployment: dict[str, Any]) -> None:
        """Know a function deployed some other way (the OpenFaaS operator, in Pro mode)."""
        with self.lock:
            self.functions[deployment["service"]] = deployment

    # -- the API --------------------------------------------------------------------------------

    def status_of(self, name: str) -> dict[str, Any] | None:
        with self.lock:
            fn = self.functions.get(name)
            hold = self.hold
            idle = name in self.idle
        if fn is None:
            return None
        labels = fn.get("labels") or {}
        replicas = 0 if idle else int(labels.get("com.openfaas.scale.min", "1"))
        available = self.host.available(name) if self.host is not None else replicas
        status: dict[str, Any] = {
            "name": fn["service"],
            "image": fn["image"],
            "namespace": self.namespace,
            "envVars": fn.get("envVars", {}),
            "labels": labels,
            "annotations": fn.get("annotations") or {},
            "secrets": fn.get("secrets", []),
            "limits": fn.get("limits"),
            "requests": fn.get("requests"),
            "readOnlyRootFilesystem": fn.get("readOnlyRootFilesystem", False),
            "invocationCount": 0,
        }
        if replicas:
            status["replicas"] = replicas
        if available and not hold:
            status["availableReplicas"] = available
        return status

    def _reject(self, method: str, path: str, status: int, why: str) -> Reply:
        self.rejected.append((method, path, why))
        return status, why

    def handle(
        self, method: str, path: str, query: str, auth: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        if path.startswith("/function/"):
            return self.invoke(method, path.removeprefix("/function/"), headers, raw)
        if auth != self._auth:
            self.rejected.append((method, path, "unauthorized"))
            return 401, "Unauthorized", {}
        namespace = (parse_qs(query).get("namespace") or [""])[0]
        status, payload = self.system(method, path, namespace, raw)
        return status, payload, {}

    def invoke(
        self, method: str, rest: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        """``/function/<name>[.<namespace>][/subpath]``: forwarded to the host, if any."""
        target, _, subpath = rest.partition("/")
        name = unquote(target)
        if name.endswith(f".{self.namespace}"):
            name = name.removesuffix(f".{self.namespace}")
        status = self.status_of(name)
        if status is None:  # openfaas/faas gateway/handlers/scaling.go
            return 404, f"unable to find function: {name}", {}
        if self.host is None:
            return 404, "Not Found", {}
        if not status.get("availableReplicas"):  # faas-provider proxy/proxy.go
            return 503, f"No endpoints available for: {name}.", {"X-OpenFaaS-Internal": "proxy"}
        code, answer_headers, body = self.host.forward(name, method, subpath, headers, raw)
        return code, body, answer_headers

    def system(self, method: str, path: str, namespace: str, raw: bytes) -> Reply:
        if path == "/system/secrets":
            return self.secrets_api(method, path, namespace, raw)
        if method == "GET" and path.startswith("/system/function/"):
            if namespace and namespace != self.namespace:  # pkg/handlers/replica_reader.go
                return self._reject(method, path, 400, f"namespace must be: {self.namespace}")
            status = self.status_of(unquote(path.removeprefix("/system/function/")))
            if status is not None and self.odd_status is not None:
                return 200, self.odd_status
            return (200, status) if status is not None else (404, "")
        if method == "GET" and path == "/system/functions":
            if namespace and namespace != self.namespace:  # pkg/handlers/reader.go
                return self._reject(method, path, 400, f"namespace must be: {self.namespace}")
            with self.lock:
                names = list(self.functions)
            return 200, [self.status_of(n) for n in names]
        if path != "/system/functions" or method not in ("POST", "PUT", "DELETE"):
            return 404, "Not Found"
        if method == "DELETE" and namespace and namespace != self.namespace:  # delete.go
            return self._reject(method, path, 400, f"namespace must be: {self.namespace}")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._reject(method, path, 400, "failed to unmarshal request: not JSON")
        validator = _DELETE if method == "DELETE" else _DEPLOYMENT
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "body"
            return self._reject(
                method, path, 400, f"failed to unmarshal request: {where}: {errors[0].message}"
            )
        if method == "DELETE":
            return self.delete(path, body)
        why = self.invalid_deployment(body)
        if why:
            return self._reject(method, path, 400, why)
        return self.deploy(method, path, body)

    def invalid_deployment(self, body: dict[str, Any]) -> str:
        """faas-netes' checks of a FunctionDeployment, in its order ('' when it passes)."""
        service = body["service"]
        if not _DNS_LABEL.match(service):  # pkg/handlers/validate.go
            return f"validation failed: service: ({service}) is invalid, must be a valid DNS entry"
        labels = body.get("labels") or {}
        if labels.get("com.openfaas.scale.zero") == "true":
            return "validation failed: com.openfaas.scale.zero not available for Community Edition"
        if "com.openfaas.scale.zero-duration" in labels:
            return (
                "validation failed: com.openfaas.scale.zero-duration not available for "
                "Community Edition"
            )
        for bound in ("max", "min"):  # validate.go validateScalingLabels: MaxReplicas
            value = labels.get(f"com.openfaas.scale.{bound}", "")
            if value.isdigit() and int(value) > CE_MAX_REPLICAS:
                return (
                    f"validation failed: com.openfaas.scale.{bound} is set too high for "
                    "Community Edition"
                )
        if body.get("namespace") and body["namespace"] != self.namespace:  # deploy.go, update.go
            return f"namespace must be: {self.namespace}"
        with self.lock:
            missing = [s for s in body.get("secrets") or [] if s not in self.secrets]
            private = body["image"] in self.private
        if missing:  # deploy.go (and update.go, through the same factory), pkg/k8s/secrets.go
            return FETCH_SECRETS.format(name=missing[0])
        if private:  # deploy.go, update.go: isAnonymous (validate.go), after the secrets
            return "the Community Edition license agreement only allows public images"
        return ""

    def deploy(self, method: str, path: str, body: dict[str, Any]) -> Reply:
        name = body["service"]
        with self.lock:
            full = method == "POST" and len(self.functions) + 1 > CE_MAX_FUNCTIONS
        if full:  # deploy.go: functionList.Count() + 1 > MaxFunctions
            why = MAX_FUNCTIONS.format(limit=CE_MAX_FUNCTIONS)
            return self._reject(method, path, 400, why)
        with self.lock:
            exists = name in self.functions
            if method == "POST" and exists:  # deploy.go: the Deployment exists
                return self._reject(
                    method, path, 500, f'unable create Deployment: "{name}" already exists'
                )
            if method == "PUT" and not exists:  # update.go
                return 404, f"unable update Deployment: {name}.{self.namespace}, not found"
            self.requests.append((method, path, body))
            self.functions[name] = body
            mounted = {s: self.secrets[s] for s in body.get("secrets") or []}
        if self.host is not None:
            self.host.deployed(body, mounted)
        return 202, ""

    def delete(self, path: str, body: dict[str, Any]) -> Reply:
        name = body["functionName"]
        with self.lock:
            self.requests.append(("DELETE", path, body))
            if name not in self.functions:  # delete.go
                return 404, f'deployments.apps "{name}" not found'
            del self.functions[name]
            self.idle.discard(name)
        if self.host is not None:
            self.host.removed(name)
        return 202, ""

    def secrets_api(self, method: str, path: str, namespace: str, raw: bytes) -> Reply:
        """``/system/secrets`` as faas-netes pkg/handlers/secrets.go serves it."""
        if method == "GET":
            if namespace and namespace != self.namespace:  # namespaces.go: 400, no body
                return self._reject(method, path, 400, "")
            with self.lock:
                listed = [{"name": n, "namespace": self.namespace} for n in sorted(self.secrets)]
            return 200, listed
        if method not in ("POST", "PUT", "DELETE"):
            return self._reject(method, path, 400, "")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._reject(method, path, 400, "")
        if not isinstance(body, dict):
            return self._reject(method, path, 400, "")
        if body.get("namespace", self.namespace) != self.namespace:  # namespaces.go
            return self._reject(method, path, 400, "")
        name, value = body.get("name"), body.get("value")
        if not isinstance(name, str) or not isinstance(value, str | None):
            return self._reject(method, path, 400, "")  # Go's json.Unmarshal fails
        if "rawValue" in body:
            value = base64.b64decode(str(body["rawValue"])).decode(errors="replace")
        with self.lock:
            if method == "DELETE":
                if name not in self.secrets:
                    return 404, ""
                del self.secrets[name]
                self.requests.append((method, path, {"name": name}))
                return 202, ""
            if not name.strip():  # pkg/k8s/secrets.go validateSecret: not a k8s error: 500
                return self._reject(method, path, 500, "")
            if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):  # the API server: Invalid
                return self._reject(method, path, 422, "")
            if self.echo_secrets:
                return self._reject(method, path, 400, f"invalid secret: {raw.decode()}")
            if self.refuse_secrets > 0:
                self.refuse_secrets -= 1
                return self._reject(method, path, 403, "")
            if method == "POST" and name in self.secrets:  # AlreadyExists
                return self._reject(method, path, 409, CONFLICT)
            if method == "PUT" and name not in self.secrets:  # NotFound
                return self._reject(method, path, 404, "")
            self.secrets[name] = value or ""
            self.requests.append((method, path, {"name": name}))  # never the value
        return 202, ""


def _handler(gateway: FakeGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            headers = {k: v for k, v in self.headers.items()}
            status, payload, extra = gateway.handle(
                self.command,
                parts.path,
                parts.query,
                self.headers.get("Authorization", ""),
                raw,
                headers,
            )
            if isinstance(payload, bytes):
                data, kind = payload, extra.pop("Content-Type", "application/octet-stream")
            elif isinstance(payload, str):
                data, kind = payload.encode(), "text/plain"
            else:
                data, kind = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            for key, value in extra.items():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler
