"""Launcher seam: one module per platform behind :class:`Launcher`, found by name in one registry.

A platform is its module plus one line in :data:`PLATFORMS`: its class declares everything else
fsd needs (its settings as :attr:`Launcher.Options`, whether its workers are local processes,
how it is made from its settings: :meth:`Launcher.create`), so the run's configuration, the
functions (``FSD_LAUNCHER``, :func:`fsd.functions.config.platform`), the variables' table
(:mod:`fsd.variables`) and the launcher conformance suite all follow from this table.

Adding one: a module with a :class:`RemoteLauncher` subclass (``invoke`` one signed task,
``failures``, ``close``; see :mod:`fsd.launch.http` for platforms that POST to a URL) and its
frozen :class:`LauncherOptions` (``from_env``, ``to_env``, ``missing``, ``VARIABLES``,
``SECRETS``); its line here; its module in pyproject.toml's "Launchers are independent" contract;
how tests stand it up in tests/launch/platform_stands.py (tests/launch/test_launcher_conformance.py
then runs it).
"""

from __future__ import annotations

from collections.abc import Mapping

from fsd import registry, settings
from fsd.errors import InputError
from fsd.launch.base import Launcher, LauncherOptions, RemoteLauncher, children

PLATFORMS: Mapping[str, str] = {
    "local": "fsd.launch.local:LocalLauncher",
    "openfaas": "fsd.launch.openfaas:OpenFaaSLauncher",
    "lambda": "fsd.launch.lambda_:LambdaLauncher",
    "knative": "fsd.launch.knative:KnativeLauncher",
}
"""Platform name -> ``module:class``, imported only when that platform is used (each platform's
client library loads with it). The first whose workers are functions is a deployment's default
(:func:`deployed`)."""


def platform(kind: str) -> type[Launcher]:
    """The Launcher class of ``kind``; :class:`InputError` for a name not in the registry."""
    cls: type[Launcher] = registry.load(PLATFORMS, kind, "platform")
    return cls


def deployed() -> str:
    """The platform a deployed function invokes workers on unless told (``FSD_LAUNCHER``): the
    first of :data:`PLATFORMS` whose workers are not local processes."""
    return next(k for k in PLATFORMS if not platform(k).LOCAL)


def options(kind: str, given: LauncherOptions | None = None) -> LauncherOptions:
    """``given`` checked to be ``kind``'s options (its defaults when None): InputError if they
    are another platform's."""
    wanted = platform(kind).Options
    if given is None:
        return wanted()
    if type(given) is not wanted:  # another platform's, though every one is LauncherOptions
        raise InputError(f"platform {kind!r} takes {wanted.__name__}, not {type(given).__name__}")
    return given


def make_launcher(
    kind: str = "local",
    given: LauncherOptions | None = None,
    *,
    secret: bytes = b"",
    timeout: float = settings.RUN_TIMEOUT,
    fanout: int = 0,
) -> Launcher:
    """A launcher of platform ``kind`` made from its options (its defaults when None)."""
    return platform(kind).create(
        options(kind, given), secret=secret, timeout=timeout, fanout=fanout
    )


__all__ = [
    "PLATFORMS",
    "Launcher",
    "LauncherOptions",
    "RemoteLauncher",
    "children",
    "deployed",
    "make_launcher",
    "options",
    "platform",
]
