"""A small client of the OpenFaaS gateway's REST API: deploy, update, delete, read a function.

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
or answers 5xx or 429 (retry later); *permanent* for other 4xx (the request itself is wrong, or
the credentials are) except faas-netes' 400 "unable to fetch secrets" on a deploy
(``pkg/handlers/deploy.go``): a secret the function mounts is missing in its namespace, which
the operator itself creates, so that one is temporary (``SecretMissing``), and CE's 400 for an
image it cannot pull anonymously ("... license agreement only supports/allows public images",
``deploy.go``/``update.go`` calling ``isAnonymous`` in ``validate.go``): the user fixes that by
making the image public, not by editing the spec, so it is retried too (``ImageNotPublic``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from fsd.k8s.errors import ReconcileError

log = logging.getLogger(__name__)


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
    def from_json(cls, data: dict[str, Any]) -> FunctionStatus:
        # replicas and availableReplicas are omitted when 0 (omitempty in faas-provider)
        return cls(
            name=str(data.get("name", "")),
            image=str(data.get("image", "")),
            replicas=int(data.get("replicas") or 0),
            available_replicas=int(data.get("availableReplicas") or 0),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
        )


class GatewayClient:
    """Talks to one gateway with bounded timeouts and no retries of its own (kopf retries)."""

    def __init__(
        self,
        url: str,
        *,
        user: str = "admin",
        password: str = "",
        timeout: float = 10.0,
        namespace: str = "",
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GatewayError(
                f"gateway URL must be http(s)://host[:port]: {url!r}", temporary=False
            )
        self.url = url.rstrip("/")
        self.namespace = namespace
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
    ) -> urllib3.BaseHTTPResponse | None:
        """The response (None: 404 with ``missing_ok``); raises :class:`GatewayError`."""
        url = f"{self.url}{path}"
        data = None if body is None else json.dumps(body).encode()
        try:
            resp = self._http.request(method, url, body=data, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise GatewayError(
                f"gateway {self.url} unreachable ({method} {path}): {type(exc).__name__}",
                temporary=True,
            ) from None
        if resp.status == 404 and missing_ok:
            return None
        if resp.status >= 400:
            detail = resp.data[:300].decode(errors="replace").strip()
            temporary = resp.status >= 500 or resp.status == 429
            reason = None
            if resp.status == 400 and "unable to fetch secrets" in detail:
                temporary, reason = True, "SecretMissing"  # the operator creates them: retry
            elif resp.status == 400 and "public images" in detail:
                temporary, reason = True, "ImageNotPublic"  # made public later: retry
            raise GatewayError(
                f"gateway {self.url}: {method} {path} -> HTTP {resp.status}: {detail}",
                temporary=temporary,
                status=resp.status,
                reason=reason,
            )
        return resp

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
            data = json.loads(resp.data or b"{}")
        except ValueError:
            raise GatewayError(
                f"gateway {self.url}: status of {name} is not JSON", temporary=True
            ) from None
        if not isinstance(data, dict):
            raise GatewayError(f"gateway {self.url}: odd status of {name}", temporary=True)
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
        assert resp is not None
        try:
            data = json.loads(resp.data or b"[]")
        except ValueError:
            data = None
        if not isinstance(data, list):
            raise GatewayError(f"gateway {self.url}: odd list of secrets", temporary=True)
        return {str(item.get("name", "")) for item in data if isinstance(item, dict)}

    def put_secret(self, name: str, value: str, *, exists: bool) -> None:
        """Create (``POST``) or replace (``PUT``) the secret ``name``; its value is never logged."""
        body: dict[str, Any] = {"name": name, "value": value}
        if self.namespace:
            body["namespace"] = self.namespace
        self._request("PUT" if exists else "POST", "/system/secrets", body)
        log.info("%s function secret %s", "updated" if exists else "created", name)
