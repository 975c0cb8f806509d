"""OpenFaaS launcher: each worker is one synchronous invocation of the ``worker`` function.

Invocations go through the gateway (``http://gateway:8080/function/worker``) or straight to function
URLs (several URLs: worker p goes to ``urls[p % len(urls)]``). They are synchronous and parallel,
one thread each: OpenFaaS CE's asynchronous queue holds only 10 items of 256 KB, and a sync call's
end tells us at once when and why a worker stopped. Gateway basic auth comes from the
``fsd-gateway-password`` secret (user ``admin`` unless ``FSD_GATEWAY_USER`` says otherwise).

For many workers the coordinator does not open W connections itself: with ``fanout`` F it invokes
workers 0..F-1, and every worker p invokes its children F(p+1) .. F(p+1)+F-1 before starting its
own layer loop (:func:`children`), a tree of depth log_F(W).

Every invocation is signed with the deployment secret; the invocation itself (threads, retries
on 429/503, the replies of a tree) is :class:`fsd.launch.http.HttpLauncher`'s, shared with
Knative: this adds the gateway's basic auth.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from fsd import settings
from fsd.launch.base import LauncherOptions, children
from fsd.launch.http import ABORT_GRACE, INVOCATION_TTL, HttpLauncher, worker_urls
from fsd.settings import RUN_TIMEOUT

__all__ = [
    "ABORT_GRACE",
    "GATEWAY_USER",
    "INVOCATION_TTL",
    "SECRETS_DIR",
    "OpenFaaSLauncher",
    "OpenFaaSOptions",
    "children",
]

GATEWAY_USER = "admin"
"""The gateway's basic-auth user unless told otherwise (faas-netes' and the chart's): the
functions', the operator's (:mod:`fsd.k8s.openfaas`) and ``fsd invoke``'s default."""

SECRETS_DIR = "/var/openfaas/secrets"
"""Where OpenFaaS mounts a function's secrets (and the chart the operator's)."""


@dataclass(frozen=True)
class OpenFaaSOptions(LauncherOptions):
    """Where the worker function is and the gateway's basic auth."""

    urls: tuple[str, ...] = ()
    user: str = GATEWAY_USER
    password: str = field(default="", repr=False)

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "FSD_WORKER_URL": "the worker function's URL(s), comma-separated: worker p goes to the "
        "p-th modulo their number (the gateway's /function/worker, or the functions' own)",
        "FSD_GATEWAY_USER": f"the gateway's basic-auth user (default {GATEWAY_USER})",
        "FSD_GATEWAY_PASSWORD": "its password (the fsd-gateway-password secret); unset: no auth",
    }
    SECRETS: ClassVar[Mapping[str, str]] = {"fsd-gateway-password": "FSD_GATEWAY_PASSWORD"}
    SECRETS_DIR: ClassVar[str] = SECRETS_DIR

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(
            urls=worker_urls(env),
            user=settings.text(env, "FSD_GATEWAY_USER", GATEWAY_USER),
            password=env.get("FSD_GATEWAY_PASSWORD", ""),
        )

    def to_env(self) -> dict[str, str]:
        env = {"FSD_WORKER_URL": ",".join(self.urls), "FSD_GATEWAY_USER": self.user}
        if self.password:
            env["FSD_GATEWAY_PASSWORD"] = self.password
        return {k: v for k, v in env.items() if v}

    def missing(self) -> str:
        return "" if self.urls else "FSD_WORKER_URL"


class OpenFaaSLauncher(HttpLauncher):
    """Invokes the worker function once per task, through the gateway with its basic auth."""

    Options = OpenFaaSOptions
    PLATFORM = "openfaas"

    def __init__(
        self,
        urls: Sequence[str],
        timeout: float = RUN_TIMEOUT,
        user: str = "",
        password: str = "",
        connect_timeout: float = 10.0,
        fanout: int = 0,
        secret: bytes = b"",
    ) -> None:
        headers: dict[str, str] = {}
        if password:
            token = base64.b64encode(f"{user or GATEWAY_USER}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        super().__init__(
            urls,
            timeout,
            headers=headers,
            connect_timeout=connect_timeout,
            fanout=fanout,
            secret=secret,
        )

    @classmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        assert isinstance(options, OpenFaaSOptions)
        return cls(
            options.urls, timeout, options.user, options.password, fanout=fanout, secret=secret
        )
