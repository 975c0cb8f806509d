"""A stand-in OpenFaaS gateway for the operator tests: a real HTTP server that checks requests.

It serves the function-management part of the gateway's REST API as openfaas/faas documents it
(``api-docs/spec.openapi.yml``), and keeps the deployed functions in memory:

- ``POST /system/functions`` (202; 400 if the function exists) and ``PUT /system/functions``
  (200; 404 if it does not): the body must be a ``FunctionDeployment``
  (:data:`FUNCTION_DEPLOYMENT`): ``service`` and ``image`` required, ``envVars``/``labels``/
  ``annotations`` maps of strings, ``secrets``/``constraints`` lists of strings, ``limits``/
  ``requests`` ``{memory, cpu}`` strings, no unknown top-level field (400 otherwise);
- ``DELETE /system/functions`` with ``{"functionName": ...}`` (200; 404 if absent);
- ``GET /system/function/{name}``: a ``FunctionStatus`` whose ``availableReplicas`` is the
  function's ``com.openfaas.scale.min`` (0 while :attr:`FakeGateway.hold` is set), omitted when 0
  as faas-provider's ``omitempty`` does; ``GET /system/functions`` lists them.

Every request needs basic auth. Rejected requests are kept in :attr:`FakeGateway.rejected` so a
test can assert that the operator never sent one.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

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


class FakeGateway:
    """The gateway's function API on 127.0.0.1:``port`` (0: any free port)."""

    def __init__(self, port: int = 0, *, user: str = "admin", password: str = "secret") -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body) that were valid
        self.rejected: list[tuple[str, str, str]] = []  # (method, path, why)
        self.hold = False  # while True, functions report 0 available replicas
        self.metrics: dict[str, str] = {}  # function -> its /metrics exposition
        self.lock = threading.Lock()
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
        if fn is None:
            return None
        labels = fn.get("labels") or {}
        replicas = int(labels.get("com.openfaas.scale.min", "1"))
        status: dict[str, Any] = {
            "name": fn["service"],
            "image": fn["image"],
            "namespace": fn.get("namespace", "openfaas-fn"),
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
        if replicas and not hold:
            status["availableReplicas"] = replicas
        return status

    def handle(self, method: str, path: str, auth: str, raw: bytes) -> tuple[int, Any]:
        if auth != self._auth:
            self.rejected.append((method, path, "unauthorized"))
            return 401, "Unauthorized"
        if method == "GET" and path.startswith("/function/") and path.endswith("/metrics"):
            name = unquote(path.removeprefix("/function/").removesuffix("/metrics"))
            with self.lock:
                text = self.metrics.get(name)
            return (200, text) if text is not None else (404, "Not Found")
        if method == "GET" and path.startswith("/system/function/"):
            status = self.status_of(unquote(path.removeprefix("/system/function/")))
            return (200, status) if status is not None else (404, "Not Found")
        if method == "GET" and path == "/system/functions":
            with self.lock:
                names = list(self.functions)
            return 200, [self.status_of(n) for n in names]
        if path != "/system/functions" or method not in ("POST", "PUT", "DELETE"):
            return 404, "Not Found"
        try:
            body = json.loads(raw)
        except ValueError:
            self.rejected.append((method, path, "not JSON"))
            return 400, "malformed JSON"
        validator = _DELETE if method == "DELETE" else _DEPLOYMENT
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            where = "/".join(str(p) for p in errors[0].absolute_path) or "body"
            why = f"{where}: {errors[0].message}"
            self.rejected.append((method, path, why))
            return 400, why
        with self.lock:
            self.requests.append((method, path, body))
            name = body["functionName"] if method == "DELETE" else body["service"]
            exists = name in self.functions
            if method == "POST":
                if exists:
                    return 400, f"function {name} already exists"
                self.functions[name] = body
                return 202, ""
            if not exists:
                return 404, f"function {name} not found"
            if method == "PUT":
                self.functions[name] = body
                return 200, ""
            del self.functions[name]
            return 200, ""


def _handler(gateway: FakeGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = urlsplit(self.path).path
            status, payload = gateway.handle(
                self.command, path, self.headers.get("Authorization", ""), raw
            )
            if isinstance(payload, str):
                data, kind = payload.encode(), "text/plain"
            else:
                data, kind = json.dumps(payload).encode(), "application/json"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler
