"""Workers as signed synchronous HTTP invocations of a worker function's URL(s).

What every platform that invokes its worker function over HTTP shares (OpenFaaS through its
gateway, Knative at its Service URL): worker p goes to ``urls[p % len(urls)]``; invocations are
synchronous and parallel, one thread each, so a call's end tells at once when and why a worker
stopped; a fan-out tree above ``fanout`` workers (:class:`fsd.launch.base.RemoteLauncher`). A
platform subclass adds only its headers (OpenFaaS: the gateway's basic auth).

Every invocation is signed with the deployment secret (:func:`fsd.auth.sign_invocation`, valid
for :data:`INVOCATION_TTL` seconds): the worker function refuses any body it cannot verify, so
whoever can reach it, but does not hold the secret, cannot make it compute, connect or publish.
A worker re-signs its children's invocations with its own copy of the secret.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence

import urllib3

from fsd.auth import sign_invocation
from fsd.errors import AuthError, FsdError, InputError
from fsd.launch.base import RemoteLauncher
from fsd.redact import redact, redact_text
from fsd.settings import RUN_TIMEOUT, names

log = logging.getLogger(__name__)

_BUSY_SECONDS = 60.0
ABORT_GRACE = 15.0  # seconds a failed run waits for its aborted workers before cleaning up
INVOCATION_TTL = _BUSY_SECONDS + 60.0
"""How long a signed invocation stays valid: the retries on 429/503, plus clock skew."""
_MAX_DETAIL = 500


def worker_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """``FSD_WORKER_URL``, comma-separated: the one place it is read, for every platform whose
    workers are HTTP endpoints (worker p goes to the p-th modulo their number)."""
    return names(env, "FSD_WORKER_URL")


class HttpLauncher(RemoteLauncher):
    """Invokes the worker function once per task and records how each invocation ended."""

    #: the platform's name, for messages
    PLATFORM = "http"

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = RUN_TIMEOUT,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        fanout: int = 0,
        secret: bytes = b"",
    ) -> None:
        super().__init__()
        if not secret:
            raise AuthError(
                "no deployment secret to sign worker invocations with: set FSD_RUN_KEY "
                "(functions: mount the fsd-run-key secret)"
            )
        if not urls:
            raise InputError(
                f"the {self.PLATFORM} launcher needs the worker function's URL (FSD_WORKER_URL)"
            )
        self._urls = list(urls)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=timeout)
        self._http = urllib3.PoolManager(maxsize=64, retries=urllib3.Retry(total=0))
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self.fanout = fanout
        self._secret = secret  # signs invocations (fsd.auth); never sent
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._failed: dict[int, str] = {}

    def invoke(self, worker: int, payload: dict[str, object]) -> None:
        """Start one invocation (in a thread) of the worker function for ``worker``: the task
        ``payload`` (:meth:`WorkerTask.to_json`), signed."""
        try:
            body = json.dumps(sign_invocation(self._secret, payload, INVOCATION_TTL)).encode()
        except (TypeError, ValueError) as exc:  # NaN or a non-JSON value: a bug upstream
            raise FsdError(f"worker {worker}: the task cannot be sent: {exc}") from None
        url = self._urls[worker % len(self._urls)]
        thread = threading.Thread(
            target=self._invoke, args=(worker, url, body), daemon=True, name=f"fsd-invoke-{worker}"
        )
        thread.start()
        self._threads.append(thread)

    def _invoke(self, worker: int, url: str, body: bytes) -> None:
        try:
            resp = self._post(url, body)
        except urllib3.exceptions.TimeoutError:
            self._fail(worker, f"invocation timed out at {redact(url)}")
            return
        except urllib3.exceptions.HTTPError as exc:
            self._fail(worker, f"invocation failed at {redact(url)}: {type(exc).__name__}: {exc}")
            return
        try:
            reply = json.loads(resp.data or b"{}")
        except ValueError:
            reply = {"detail": resp.data[:200].decode(errors="replace")}
        if not isinstance(reply, dict):
            reply = {}
        if resp.status >= 400:
            detail = reply.get("detail") or reply.get("error") or f"HTTP {resp.status}"
            self._fail(worker, f"HTTP {resp.status}: {detail}")
            return
        with self._lock:
            self.replies[worker] = reply
            # a tree: the worker's reply carries its subtree's replies and failures
            children = reply.get("children")
            for child in children if isinstance(children, list) else []:
                if isinstance(child, dict) and isinstance(child.get("worker"), int):
                    self.replies[child["worker"]] = child
            failures = reply.get("child_failures")
            for key, why in (failures if isinstance(failures, dict) else {}).items():
                if str(key).isdigit() and len(str(key)) <= 6:
                    self._failed[int(key)] = str(why)[:_MAX_DETAIL]

    def _post(self, url: str, body: bytes) -> urllib3.BaseHTTPResponse:
        """POST, retrying while the platform says the call never started, for up to a minute:
        429 (OpenFaaS: every replica at max_inflight) or 503 (no replica ready yet; Knative's
        queue-proxy with its queue full). Not 502: a worker that died half-way cannot be re-run
        (its peers have moved on), so that is reported at once."""
        deadline = time.monotonic() + _BUSY_SECONDS
        delay = 0.05
        while True:
            resp = self._http.request(
                "POST", url, body=body, headers=self._headers, timeout=self._timeout
            )
            if resp.status not in (429, 503) or time.monotonic() + delay > deadline:
                return resp
            if resp.status == 503 and b'"not configured"' in resp.data[:200]:
                return resp  # the function itself refuses: waiting will not change it
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _fail(self, worker: int, why: str) -> None:
        why = redact_text(str(why))[:_MAX_DETAIL]
        log.warning("worker %d: %s", worker, why)
        with self._lock:
            self._failed[worker] = why

    def failures(self) -> dict[int, str]:
        with self._lock:
            return dict(self._failed)

    def abort(self) -> None:
        """Remote workers can't be killed: they were sent ABORT; wait (bounded) for them to end."""
        self.close(grace=ABORT_GRACE)

    def close(self, grace: float = 5.0) -> None:
        """Wait up to ``grace`` seconds in all for the invocations to return."""
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []
