"""Launcher seam: local processes now; OpenFaaS and AWS Lambda are one module each."""

from __future__ import annotations

from fsd.errors import InputError
from fsd.launch.base import Launcher

LAUNCHERS = ("local",)


def make_launcher(kind: str = "local") -> Launcher:
    if kind == "local":
        from fsd.launch.local import LocalLauncher  # noqa: PLC0415

        return LocalLauncher()
    raise InputError(f"unknown launcher {kind!r}; choose one of {', '.join(LAUNCHERS)}")


__all__ = ["LAUNCHERS", "Launcher", "make_launcher"]
