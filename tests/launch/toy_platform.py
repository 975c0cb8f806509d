"""A platform that exists only in tests: proof that adding one is its module plus one registry
entry (tests/launch/test_registry.py), as tests/launch/toy_transport.py is for transports.

Its "functions" are threads of this process calling a worker function's entry (``handler``:
``module:function`` taking the body and answering ``(status, reply)``, by default the template's
own :func:`fsd.functions.worker.handle_request`, which reads this process's environment as its
configuration). Everything else is the seam's: invocations signed with the deployment secret,
the fan-out tree (a worker's children come through the registry, ``FSD_LAUNCHER=toy``), the
replies and failures a platform reports.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from fsd import settings
from fsd.auth import sign_invocation
from fsd.errors import AuthError
from fsd.launch.base import LauncherOptions, RemoteLauncher


@dataclass(frozen=True)
class ToyOptions(LauncherOptions):
    handler: str = ""

    VARIABLES: ClassVar[Mapping[str, str]] = {"FSD_TOY_HANDLER": "the worker entry, module:func"}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(handler=settings.text(env, "FSD_TOY_HANDLER"))

    def to_env(self) -> dict[str, str]:
        return {"FSD_TOY_HANDLER": self.handler} if self.handler else {}

    def missing(self) -> str:
        return "" if self.handler else "FSD_TOY_HANDLER"


class ToyLauncher(RemoteLauncher):
    Options = ToyOptions

    def __init__(self, handler: str, secret: bytes, fanout: int) -> None:
        super().__init__()
        if not secret:
            raise AuthError("no deployment secret to sign worker invocations with")
        self.fanout = fanout
        self._handler = handler
        self._secret = secret
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._failed: dict[int, str] = {}

    @classmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        assert isinstance(options, ToyOptions)
        return cls(options.handler or "fsd.functions.worker:handle_request", secret, fanout)

    def invoke(self, worker: int, payload: dict[str, Any]) -> None:
        body = json.dumps(sign_invocation(self._secret, payload, 60.0)).encode()
        thread = threading.Thread(target=self._call, args=(worker, body), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _call(self, worker: int, body: bytes) -> None:
        module, _, name = self._handler.partition(":")
        try:
            entry: Callable[[bytes], tuple[int, dict[str, Any]]]
            entry = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            with self._lock:
                self._failed[worker] = f"cannot be invoked: {exc}"
            return
        status, reply = entry(body)
        with self._lock:
            if status >= 400:
                self._failed[worker] = f"{status}: {reply.get('detail', reply)}"
                return
            self.replies[worker] = reply
            for child in reply.get("children", []):
                self.replies[child["worker"]] = child
            for key, why in reply.get("child_failures", {}).items():
                self._failed[int(key)] = why

    def failures(self) -> dict[int, str]:
        with self._lock:
            return dict(self._failed)

    def close(self, grace: float = 5.0) -> None:
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []
