"""The pods behind the stand-in gateway: each deployed function served locally by the template.

:class:`LocalFunctionHost` is the ``FunctionHost`` the gateway stand-in (tests/k8s/k8s_gateway.py)
calls where faas-netes would create, change or delete a Deployment and where the gateway's proxy
would reach a function's pods. Each function is one process of the template's entry
(``template/fsd-python3-http/index.py``, what the container runs behind of-watchdog) serving
``functions/<role>`` -- :class:`fsd.localstack.FunctionServer`, the same as ``make functions-up``.

What a pod gets, and so what each process gets:

- its environment: the deployment's ``envVars`` only (plus what a Python process needs to run:
  ``PATH``, ``PYTHONPATH`` to this checkout, a log folder), with every in-cluster address in them
  rewritten by the ``addresses`` map given to the constructor (``nats://fsd-nats.fsd:4222`` -> the
  test's NATS, the gateway URL in ``FSD_WORKER_URL`` -> the stand-in gateway, ...). An address
  the map does not know stays as it is and fails as it would in a cluster without that service;
- its secrets: as files in its own ``FSD_SECRETS_DIR`` (OpenFaaS mounts them at
  ``/var/openfaas/secrets/<name>``), only those the deployment names in ``secrets``: a secret the
  gateway holds but the function does not name is not there, and a named one the gateway did not
  give is missing, as it would be;
- its handler: from the ``fsd.dev/role`` label (``functions/coordinator`` or ``functions/worker``),
  where the cluster has the image built from that folder.

A deployment that changes (its body or a secret's value) restarts the process, as a new pod
template rolls the pods; the same one again changes nothing. ``available`` is 1 once the
process's ``/_/health`` answers (of-watchdog's health path), which is when Kubernetes would count
the pod as available.

What one local process per function cannot cover:

- replicas: the gateway balances one function's invocations over its replicas; here they all go
  to one process, which serves them concurrently (the entry is threaded), so ``max_inflight``,
  per-replica memory and the 429 a full replica answers are not exercised, and a scale.min of N
  is reported as 1 available replica;
- the container: no image, no of-watchdog in front (its timeouts, its ``/_/ready``), no
  ``readOnlyRootFilesystem`` (the process can write anywhere the test user can), no resource
  limits, no probes restarting a hung process;
- shutdown: ``FSD_SHUTDOWN_DELAY_SECONDS`` is set to 0 (``overrides``), because that delay is
  there for Kubernetes to drop the pod from the Service's endpoints first; here the gateway forgets
  the function before the host stops it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fsd.localstack import ROOT, FunctionServer
from fsd.services import pick_ports

log = logging.getLogger(__name__)

ROLE_LABEL = "fsd.dev/role"
HANDLERS = {
    "coordinator": ROOT / "functions" / "coordinator",
    "worker": ROOT / "functions" / "worker",
}
#: what a Python process needs from the test's environment (a container has its own)
PASSED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")
#: RFC 9110 7.6.1 connection-specific fields, which a proxy does not forward; Host and
#: Content-Length are set anew for the upstream request
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class _Function:
    """One deployed function: its process, what it was started from, its private folder."""

    def __init__(self, name: str, server: FunctionServer, folder: Path, fingerprint: str) -> None:
        self.name = name
        self.server = server
        self.folder = folder
        self.fingerprint = fingerprint


class LocalFunctionHost:
    """Functions deployed through the stand-in gateway, each a local process of the template.

    ``addresses`` maps in-cluster addresses (``scheme://host:port``, or a longer URL) to local ones,
    the longest match first; it is read at each deployment, so services may be added later;
    ``overrides`` are set over the deployment's env (see the module docstring for why);
    ``timeout`` bounds one forwarded request (the gateway's upstream timeout);
    ``start_timeout`` bounds waiting for a process in :meth:`wait_available`.
    """

    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        overrides: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        start_timeout: float = 30.0,
    ) -> None:
        self.addresses = addresses  # read at each deployment: a test may add to it later
        self.overrides = (
            {"FSD_SHUTDOWN_DELAY_SECONDS": "0"} if overrides is None else dict(overrides)
        )
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="fsd-host-"))
        self._functions: dict[str, _Function] = {}
        self._lock = threading.RLock()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- the FunctionHost protocol -----------------------------------------------------------

    def deployed(self, deployment: dict[str, Any], secrets: dict[str, str]) -> None:
        """Start ``deployment`` (or restart it when it or its secrets changed)."""
        name = str(deployment["service"])
        role = (deployment.get("labels") or {}).get(ROLE_LABEL, "")
        if role not in HANDLERS:
            raise ValueError(f"{name}: label {ROLE_LABEL} is {role!r}, not one of {list(HANDLERS)}")
        named = [str(s) for s in deployment.get("secrets") or []]
        mounted = {s: secrets[s] for s in named if s in secrets}
        fingerprint = hashlib.sha256(
            json.dumps([deployment, mounted], sort_keys=True).encode()
        ).hexdigest()
        with self._lock:
            current = self._functions.get(name)
            if current is not None and current.fingerprint == fingerprint:
                return  # the same pod template: Kubernetes rolls nothing
            if current is not None:
                self._stop(current)
            folder = Path(tempfile.mkdtemp(prefix=f"{name[:40]}-", dir=self.dir))
            secrets_dir = folder / "secrets"
            secrets_dir.mkdir(mode=0o700)
            for secret, value in mounted.items():
                path = secrets_dir / secret
                path.touch(mode=0o600)
                path.write_text(value)
            env = self._environment(deployment, folder, secrets_dir)
            (port,) = pick_ports(1)
            server = self.start(name, HANDLERS[role], env, port)
            self._functions[name] = _Function(name, server, folder, fingerprint)
            log.info("started %s (%s) on port %d", name, role, port)

    def removed(self, name: str) -> None:
        """Stop ``name``'s process and wait for it to exit (nothing if it is not deployed)."""
        with self._lock:
            found = self._functions.pop(name, None)
        if found is not None:
            self._stop(found)

    def available(self, name: str) -> int:
        """1 when ``name``'s process answers its health check, else 0."""
        with self._lock:
            found = self._functions.get(name)
        if found is None or found.server.proc.poll() is not None:
            return 0
        url = f"{found.server.url}_/health"
        with contextlib.suppress(OSError), self._opener.open(url, timeout=1.0) as resp:
            return 1 if resp.status == 200 else 0
        return 0

    def forward(
        self, name: str, method: str, subpath: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to ``name``'s process, as the gateway's proxy sends it.

        As openfaas/faas-provider ``proxy/proxy.go`` (``proxyRequest``): the request's headers
        are copied (hop-by-hop ones dropped, as Go's client does), and an upstream that cannot be
        reached or does not answer within the timeout gets 500 "Can't reach service for: NAME."
        with ``X-OpenFaaS-Internal: proxy``. A function this host does not know raises
        :class:`KeyError`: the gateway answers those itself before proxying.
        """
        with self._lock:
            port = self._functions[name].server.port
        path = "/" + subpath.lstrip("/")
        sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self.timeout)
            conn.request(method, path, body=body or None, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            got = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP}
            return resp.status, got, data
        except (OSError, http.client.HTTPException):
            message = f"Can't reach service for: {name}.".encode()
            return 500, {"Content-Type": "text/plain", "X-OpenFaaS-Internal": "proxy"}, message
        finally:
            conn.close()

    def start(self, name: str, handler: Path, env: dict[str, str], port: int) -> FunctionServer:
        """One function's process on ``port`` (a platform's stand-in may start it otherwise)."""
        return FunctionServer(name, handler, env, port)

    # -- for tests ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._functions)

    def pids(self) -> list[int]:
        """The process ids of every function started and not yet stopped."""
        with self._lock:
            return [f.server.proc.pid for f in self._functions.values()]

    def pid(self, name: str) -> int:
        with self._lock:
            return self._functions[name].server.proc.pid

    def url(self, name: str) -> str:
        with self._lock:
            return self._functions[name].server.url

    def log_of(self, name: str) -> str:
        """The output of ``name``'s current process so far (for a failing test to show)."""
        with self._lock:
            path = self._functions[name].server.log_path
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_available(self, name: str) -> None:
        with self._lock:
            server = self._functions[name].server
        server.wait_ready(self.start_timeout)

    def close(self) -> None:
        with self._lock:
            functions = list(self._functions.values())
            self._functions.clear()
        for function in functions:
            self._stop(function)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- inside ------------------------------------------------------------------------------

    def local(self, value: str) -> str:
        """``value`` with each comma-separated address rewritten by the ``addresses`` map."""
        return ",".join(self._local_one(part) for part in value.split(","))

    def _local_one(self, value: str) -> str:
        for prefix in sorted(self.addresses, key=len, reverse=True):
            if value.startswith(prefix):
                rest = value[len(prefix) :]
                # a whole host[:port] only: http://gateway.openfaas:8080 is not http://gateway.o
                if not rest or rest[0] in "/?#":
                    return self.addresses[prefix] + rest
        return value

    def _environment(
        self, deployment: dict[str, Any], folder: Path, secrets_dir: Path
    ) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED if k in os.environ}
        env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's fsd, as the image would have
        for key, value in (deployment.get("envVars") or {}).items():
            env[str(key)] = self.local(str(value))
        env.update(self.overrides)
        env["FSD_SECRETS_DIR"] = str(secrets_dir)
        env["FSD_STACK_DIR"] = str(folder)  # FunctionServer's log folder
        return env

    def _stop(self, function: _Function) -> None:
        function.server.stop()
        log.info("stopped %s (exit %s)", function.name, function.server.proc.returncode)
        # its secrets go with it; its log stays for a failing test to show, until close()
        shutil.rmtree(function.folder / "secrets", ignore_errors=True)
