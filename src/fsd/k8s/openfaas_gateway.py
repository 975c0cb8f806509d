"""A small client of the OpenFaaS gateway's REST API: deploy, update, delete, read a function
(the operator's OpenFaaS platform, :mod:`fsd.k8s.openfaas`, deploys through it).

Endpoints (openfaas/faas ``api-docs/spec.openapi.yml``): ``POST /system/functions`` deploys a
``FunctionDeployment`` (202), ``PUT /system/functions`` updates one (200; 404 if absent),
``DELETE /system/functions`` with ``{"functionName": ...}`` removes one (404 if absent), and
``GET /system/function/{name}`` answers a ``FunctionStatus`` with ``availableReplicas`` (404 if
absent; the ``namespace`` query parameter picks a non-default namespace). The gateway wants basic
auth (user ``admin`` and the ``basic-auth`` secret's password in a default installation).

Secrets (faas-netes ``pkg/handlers/secrets.go`` over faas-provider ``types/secret.go``'s
``Secret {name, namespace, value, rawValue}``): ``GET /system/secrets`` lists names only (never
values), ``POST`` creates (202; 409 if it exists), ``PUT`` replaces the value (202; 404 if
absent); the namespace comes from the ``namespace`` query parameter (GET) or body field
(POST/PUT/DELETE) and must be the gateway's function namespace (faas-netes
``pkg/handlers/namespaces.go``, ``NewNamespaceResolver``: 400 otherwise).

Failures raise :class:`GatewayError`: *temporary* when the gateway cannot be reached, times out,
answers more than :data:`MAX_ANSWER` bytes or something that is not what the API says, or answers
5xx or 429 (retry later); *permanent* for other 4xx (the request itself is wrong) except those the
world fixes without a spec change (:func:`classify`): faas-netes' 400 "unable to fetch secrets" on a
deploy (``SecretMissing``: the operator creates them), CE's 400 for an image it cannot pull
anonymously (``ImageNotPublic``: made public later), CE's 400 "unable to create function,
maximum: 15" (``FunctionLimit``: another function removed later) and a 401 (``GatewayUnauthorized``:
the basic-auth password rotated; the operator reads ``FSD_GATEWAY_PASSWORD_FILE`` on every use).

Answers are read with a byte cap and a total deadline (:func:`fsd.bounded.read_within`), so a
slow or endless gateway answer fails this request rather than holding the reconcile. The answer to
a ``/system/secrets`` call never reaches a message (the status code only): a gateway or a proxy
that echoes the request would otherwise put a secret value into a status, an Event or a log.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from fsd.bounded import read_within
from fsd.k8s.errors import ReconcileError
from fsd.launch.openfaas import GATEWAY_USER

log = logging.getLogger(__name__)

GATEWAY_TIMEOUT = 10.0
"""Seconds per request to the gateway's REST API (the operator's ``FSD_GATEWAY_TIMEOUT``)."""

MAX_ANSWER = 1024 * 1024
"""Bytes of a gateway answer read at most: a function's status or the secrets' list is a few KiB."""
_MAX_REPLICAS = 1_000_000

#: faas-netes' 400s that are not the request's fault (pkg/handlers/deploy.go, update.go): the
#: start of the text, and the reason the operator reports while it retries
_FIXABLE = (
    ("unable to fetch secrets", "SecretMissing"),  # deploy.go: fmt.Errorf("unable to fetch ...
    ("public images", "ImageNotPublic"),  # deploy.go/update.go after isAnonymous (validate.go)
    ("unable to create function, maximum", "FunctionLimit"),  # deploy.go: MaxFunctions (CE)
)


def classify(status: int, detail: str) -> tuple[bool, str | None]:
    """(temporary, reason) of a gateway's error answer ``status`` with body text ``detail``."""
    if status == 401:
        return True, "GatewayUnauthorized"  # a rotated password: the file is read again
    if status >= 500 or status == 429:
        return True, None
    if status == 400:
        for text, reason in _FIXABLE:
            if text in detail:
                return True, reason
    return False, None


class GatewayError(ReconcileError):
    """The gateway failed a request; ``status`` is its HTTP status (None: no answer)."""

    def __init__(
        self,
        message: str,
        *,
        temporary: bool,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        if reason is None:
            reason = "GatewayUnreachable" if temporary else "GatewayRejected"
        super().__init__(message, temporary=temporary, reason=reason)
        self.status = status


@dataclass(frozen=True)
class FunctionStatus:
    """What ``GET /system/function/{name}`` says about a deployed function."""

    name: str
    image: str
    replicas: int
    available_replicas: int
    labels: dict[str, str]

    @classmethod
    def from_json(cls, data: Any) -> FunctionStatus:
        """Checked field by field (faas-provider ``types/model.go``); raises a temporary
        :class:`GatewayError` for anything else (an odd gateway, never a crash of the caller)."""

        def odd(what: str) -> GatewayError:
            return GatewayError(f"the gateway's function status has {what}", temporary=True)

        if not isinstance(data, dict):
            raise odd("no JSON object")
        texts = {}
        for key in ("name", "image"):
            value = data.get(key, "")
            if not isinstance(value, str):
                raise odd(f"a {key} that is not a string")
            texts[key] = value
        counts = {}
        # replicas and availableReplicas are omitted when 0 (omitempty in faas-provider)
        for key in ("replicas", "availableReplicas"):
            value = data.get(key) or 0
            if type(value) is not int or not 0 <= value <= _MAX_REPLICAS:
                raise odd(f"a {key} that is no count")
            counts[key] = value
        labels = data.get("labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise odd("labels that are not a map of strings")
        return cls(
            name=texts["name"],
            image=texts["image"],
            replicas=counts["replicas"],
            available_replicas=counts["availableReplicas"],
            labels=dict(labels),
        )


class GatewayClient:
    """Talks to one gateway with bounded timeouts and no retries of its own (kopf retries)."""

    def __init__(
        self,
        url: str,
        *,
        user: str = GATEWAY_USER,
        password: str = "",
        timeout: float = GATEWAY_TIMEOUT,
        namespace: str = "",
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GatewayError(
                f"gateway URL must be http(s)://host[:port]: {url!r}", temporary=False
            )
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.timeout = timeout
        self._http = urllib3.PoolManager(
            maxsize=2,
            retries=urllib3.Retry(total=0),
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
        )
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if password:
            self._headers.update(urllib3.make_headers(basic_auth=f"{user or 'admin'}:{password}"))

    def close(self) -> None:
        self._http.clear()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        missing_ok: bool = False,
    ) -> bytes | None:
        """The answer's body (None: 404 with ``missing_ok``); raises :class:`GatewayError`."""
        url = f"{self.url}{path}"
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + 2 * self.timeout
        try:
            resp = self._http.request(
                method, url, body=data, headers=self._headers, preload_content=False
            )
            try:
                answer = read_within(resp, MAX_ANSWER, deadline)
            finally:
                resp.release_conn()
        except (urllib3.exceptions.HTTPError, TimeoutError) as exc:
            raise GatewayError(
                f"gateway {self.url} unreachable ({method} {path}): {type(exc).__name__}",
                temporary=True,
            ) from None
        if len(answer) > MAX_ANSWER:
            raise GatewayError(
                f"gateway {self.url}: {method} {path} answered more than {MAX_ANSWER} bytes",
                temporary=True,
            )
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            detail = answer[:300].decode(errors="replace").strip()
            temporary, reason = classify(resp.status, detail)
            # a secret call's answer may echo the value sent: its status code only
            shown = "" if path.startswith("/system/secrets") else f": {detail}"
            raise GatewayError(
                f"gateway {self.url}: {method} {path} -> HTTP {resp.status}{shown}",
                temporary=temporary,
                status=resp.status,
                reason=reason,
            )
        return answer

    def _query(self) -> str:
        return f"?{urlencode({'namespace': self.namespace})}" if self.namespace else ""

    def status(self, name: str) -> FunctionStatus | None:
        """The function's status, or None if the gateway has no such function."""
        resp = self._request(
            "GET", f"/system/function/{quote(name)}{self._query()}", missing_ok=True
        )
        if resp is None:
            return None
        try:
            data = json.loads(resp or b"{}")
        except (ValueError, RecursionError):
            raise GatewayError(
                f"gateway {self.url}: status of {name} is not JSON", temporary=True
            ) from None
        return FunctionStatus.from_json(data)

    def create(self, deployment: dict[str, Any]) -> None:
        """``POST /system/functions``: deploy a new function."""
        self._request("POST", "/system/functions", deployment)
        log.info("deployed function %s", deployment["service"])

    def update(self, deployment: dict[str, Any]) -> bool:
        """``PUT /system/functions``; False if the function is gone (404)."""
        found = self._request("PUT", "/system/functions", deployment, missing_ok=True) is not None
        if found:
            log.info("updated function %s", deployment["service"])
        return found

    def delete(self, name: str) -> bool:
        """Remove the function; False if there was none (deleting twice is fine)."""
        resp = self._request(
            "DELETE", f"/system/functions{self._query()}", {"functionName": name}, missing_ok=True
        )
        if resp is not None:
            log.info("deleted function %s", name)
        return resp is not None

    # -- secrets --------------------------------------------------------------------------------

    def secret_names(self) -> set[str]:
        """Names of the function secrets the gateway knows (``GET /system/secrets``)."""
        resp = self._request("GET", f"/system/secrets{self._query()}")
        try:
            data = json.loads(resp or b"[]")
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, list):
            raise GatewayError(f"gateway {self.url}: odd list of secrets", temporary=True)
        return {i["name"] for i in data if isinstance(i, dict) and isinstance(i.get("name"), str)}

    def put_secret(self, name: str, value: str, *, exists: bool) -> None:
        """Create (``POST``) or replace (``PUT``) the secret ``name``; its value is never logged."""
        body: dict[str, Any] = {"name": name, "value": value}
        if self.namespace:
            body["namespace"] = self.namespace
        self._request("PUT" if exists else "POST", "/system/secrets", body)
        log.info("%s function secret %s", "updated" if exists else "created", name)
