"""OpenFaaS launcher: each worker is one synchronous invocation of the ``worker`` function.

Invocations go through the gateway (``http://gateway:8080/function/worker``) or straight to function
URLs (several URLs: worker p goes to ``urls[p % len(urls)]``). They are synchronous and parallel,
one thread each: OpenFaaS CE's asynchronous queue holds only 10 items of 256 KB, and a sync call's
end tells us at once when and why a worker stopped. Gateway basic auth comes from the
``fsd-gateway-password`` secret (user ``admin`` unless ``FSD_GATEWAY_USER`` says otherwise).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Sequence

import urllib3

from fsd.errors import InputError
from fsd.launch.base import Launcher
from fsd.worker import WorkerTask

log = logging.getLogger(__name__)


class OpenFaaSLauncher(Launcher):
    """Invokes the worker function once per task and records how each invocation ended."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = 600.0,
        user: str = "",
        password: str = "",
        connect_timeout: float = 10.0,
    ) -> None:
        if not urls:
            raise InputError(
                "the openfaas launcher needs the worker function's URL (FSD_WORKER_URL)"
            )
        self._urls = list(urls)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=timeout)
        self._http = urllib3.PoolManager(maxsize=64, retries=urllib3.Retry(total=0))
        self._headers = {"Content-Type": "application/json"}
        if password:
            token = base64.b64encode(f"{user or 'admin'}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._failed: dict[int, str] = {}
        self.replies: dict[int, dict[str, object]] = {}

    def launch(self, tasks: Sequence[WorkerTask]) -> None:
        for task in tasks:
            body = json.dumps(task.to_json()).encode()
            url = self._urls[task.worker % len(self._urls)]
            thread = threading.Thread(
                target=self._invoke,
                args=(task.worker, url, body),
                daemon=True,
                name=f"fsd-invoke-{task.worker}",
            )
            thread.start()
            self._threads.append(thread)

    def _invoke(self, worker: int, url: str, body: bytes) -> None:
        try:
            resp = self._http.request(
                "POST", url, body=body, headers=self._headers, timeout=self._timeout
            )
        except urllib3.exceptions.TimeoutError:
            self._fail(worker, f"invocation timed out at {url}")
            return
        except urllib3.exceptions.HTTPError as exc:
            self._fail(worker, f"invocation failed at {url}: {type(exc).__name__}: {exc}")
            return
        try:
            reply = json.loads(resp.data or b"{}")
        except ValueError:
            reply = {"detail": resp.data[:200].decode(errors="replace")}
        if resp.status >= 400:
            detail = reply.get("detail") or reply.get("error") or f"HTTP {resp.status}"
            self._fail(worker, f"HTTP {resp.status}: {detail}")
            return
        with self._lock:
            self.replies[worker] = reply if isinstance(reply, dict) else {}

    def _fail(self, worker: int, why: str) -> None:
        log.warning("worker %d: %s", worker, why)
        with self._lock:
            self._failed[worker] = why

    def failures(self) -> dict[int, str]:
        with self._lock:
            return dict(self._failed)

    def close(self, grace: float = 5.0) -> None:
        for thread in self._threads:
            thread.join(timeout=grace)
        self._threads = []
