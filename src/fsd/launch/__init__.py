"""Launcher seam: local processes, OpenFaaS functions; AWS Lambda is one module more."""

from __future__ import annotations

from collections.abc import Sequence

from fsd.errors import InputError
from fsd.launch.base import Launcher

LAUNCHERS = ("local", "openfaas")


def make_launcher(
    kind: str = "local",
    urls: Sequence[str] = (),
    timeout: float = 600.0,
    user: str = "",
    password: str = "",
    fanout: int = 0,
    *,
    secret: bytes = b"",
) -> Launcher:
    if kind == "local":
        from fsd.launch.local import LocalLauncher  # noqa: PLC0415

        return LocalLauncher()
    if kind == "openfaas":
        from fsd.launch.openfaas import OpenFaaSLauncher  # noqa: PLC0415

        return OpenFaaSLauncher(urls, timeout, user, password, fanout=fanout, secret=secret)
    raise InputError(f"unknown launcher {kind!r}; choose one of {', '.join(LAUNCHERS)}")


__all__ = ["LAUNCHERS", "Launcher", "make_launcher"]
