"""Knative Serving launcher: each worker is one synchronous invocation of the worker Service.

A Knative Service is reached at its URL (``status.address.url`` in the cluster:
``http://<service>.<namespace>.svc.cluster.local``; the operator sets it as ``FSD_WORKER_URL``,
:mod:`fsd.k8s.knative`). There is no gateway and so no gateway credentials: the ingress or the
cluster-local gateway routes by host name to the Service's pods, through the activator while it
has none (scale to zero) and each pod's queue-proxy, which admits ``containerConcurrency``
requests at once and queues some more (Knative Serving ``pkg/queue/breaker.go``). Invocations,
their signatures, retries on 503 (queue full, ``pkg/queue/handler.go``) and the fan-out tree are
:class:`fsd.launch.http.HttpLauncher`'s, the same as OpenFaaS's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Self

from fsd.launch.base import LauncherOptions
from fsd.launch.http import HttpLauncher, worker_urls

__all__ = ["KnativeLauncher", "KnativeOptions"]


@dataclass(frozen=True)
class KnativeOptions(LauncherOptions):
    """Where the worker Service is: its URL(s), nothing secret."""

    urls: tuple[str, ...] = ()

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "FSD_WORKER_URL": "the worker Knative Service's URL(s), comma-separated: worker p goes "
        "to the p-th modulo their number (http://<service>.<namespace>.svc.cluster.local)",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(urls=worker_urls(env))

    def to_env(self) -> dict[str, str]:
        return {"FSD_WORKER_URL": ",".join(self.urls)} if self.urls else {}

    def missing(self) -> str:
        return "" if self.urls else "FSD_WORKER_URL"


class KnativeLauncher(HttpLauncher):
    """Invokes the worker Service once per task at its URL (no gateway, no basic auth)."""

    Options = KnativeOptions
    PLATFORM = "knative"

    @classmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        assert isinstance(options, KnativeOptions)
        return cls(options.urls, timeout, fanout=fanout, secret=secret)
