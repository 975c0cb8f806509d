"""Launcher seam: local processes, OpenFaaS functions, AWS Lambda functions."""

from __future__ import annotations

from collections.abc import Sequence

from fsd import settings
from fsd.errors import InputError
from fsd.launch.base import Launcher, RemoteLauncher, children

LAUNCHERS = ("local", "openfaas", "lambda")


def make_launcher(
    kind: str = "local",
    urls: Sequence[str] = (),
    timeout: float = settings.RUN_TIMEOUT,
    user: str = "",
    password: str = "",
    fanout: int = 0,
    *,
    secret: bytes = b"",
    function: str = "",
    failure_queue: str = "",
) -> Launcher:
    if kind == "local":
        from fsd.launch.local import LocalLauncher  # noqa: PLC0415

        return LocalLauncher()
    if kind == "openfaas":
        from fsd.launch.openfaas import OpenFaaSLauncher  # noqa: PLC0415

        return OpenFaaSLauncher(urls, timeout, user, password, fanout=fanout, secret=secret)
    if kind == "lambda":
        from fsd.launch.lambda_ import LambdaLauncher  # noqa: PLC0415

        return LambdaLauncher(function, secret, fanout=fanout, failure_queue=failure_queue)
    raise InputError(f"unknown launcher {kind!r}; choose one of {', '.join(LAUNCHERS)}")


__all__ = ["LAUNCHERS", "Launcher", "RemoteLauncher", "children", "make_launcher"]
