"""Where the operator runs an InferenceModel's two functions: one entry per platform.

A platform is a :class:`Platform` object in its own module plus one line in :data:`PLATFORMS`
(``spec.platform``, else the operator's ``FSD_PLATFORM``, picks it). It builds the desired state
of the two functions, opens a :class:`Session` that applies it (the function secrets first),
removes it (only what this object owns: contract 2) and reads readiness, names the
coordinator's URL for ``status.coordinator`` and reads its latency. The handlers
(:mod:`fsd.k8s.handlers`) only iterate this table; they never name a platform.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fsd.k8s.errors import SourceError

if TYPE_CHECKING:
    from fsd.k8s.config import OperatorConfig
    from fsd.k8s.functions import Readiness
    from fsd.k8s.spec import ModelSpec
    from fsd.settings import Variable

PLATFORMS: Mapping[str, str] = {
    "openfaas": "fsd.k8s.openfaas:OPENFAAS",
    "knative": "fsd.k8s.knative:KNATIVE",
}
"""``spec.platform`` -> ``module:object`` (a :class:`Platform`), imported when first used; the
first is the operator's default (:data:`DEFAULT`)."""
DEFAULT = next(iter(PLATFORMS))
"""Where a model without ``spec.platform`` runs unless ``FSD_PLATFORM`` says."""


@dataclass(frozen=True)
class Target:
    """One InferenceModel as the desired state sees it."""

    name: str
    namespace: str
    spec: ModelSpec
    model: str  # the model in the store its functions serve
    uid: str = ""  # metadata.uid: the owner label (and reference) of what is made for it


class Session(Protocol):
    """A connection to the platform for one reconcile (closed at the end of it)."""

    def apply(self, desired: Sequence[dict[str, Any]], owner_uid: str, memo: Any) -> None:
        """Make the function secrets, then create or update each function (only those this
        owner owns: a function of another owner is a temporary ``FunctionNameTaken``)."""

    def remove(self, names: Sequence[str], owner_uid: str) -> None:
        """Delete the functions ``names`` that this owner owns; leave any other be."""

    def readiness(self, desired: Sequence[dict[str, Any]]) -> Readiness:
        """How the functions of ``desired`` are doing."""


class Platform(Protocol):
    """What the operator needs of one platform (see the module's docstring)."""

    VARIABLES: tuple[Variable, ...]
    """The operator's variables this platform reads (docs/configuration.md)."""

    def options_from_env(self, env: Mapping[str, str]) -> Any:
        """This platform's own operator settings (in ``OperatorConfig.platform_options``)."""

    def check(self, spec: ModelSpec, config: OperatorConfig) -> None:
        """Refuse (``InvalidSpec``) a spec that could never serve here, before any push."""

    def desired(self, target: Target, config: OperatorConfig) -> list[dict[str, Any]]:
        """The coordinator's and the worker's objects, as pure data."""

    def name_of(self, desired: Mapping[str, Any]) -> str:
        """The function name of one object of :meth:`desired`."""

    def coordinator(
        self, config: OperatorConfig, name: str, namespace: str, state: Readiness | None = None
    ) -> dict[str, str]:
        """``status.coordinator``: the coordinator function and the URL it is invoked at."""

    def latency(self, config: OperatorConfig, function: str) -> float | None:
        """``status.lastLatencySeconds``: mean seconds of the coordinator ``function``'s recent
        requests (from the platform's Prometheus, if its settings name one); None: not known. Never
        raises."""

    def session(self, config: OperatorConfig) -> AbstractContextManager[Session]:
        """A connection to the platform; temporary ``ReconcileError`` if it cannot be had."""


def get(name: str) -> Platform:
    """The platform ``name``; a permanent ``InvalidSpec`` for a name not in the registry."""
    if name not in PLATFORMS:
        raise SourceError(
            f"spec.platform must be one of {', '.join(PLATFORMS)}: {name[:40]!r}",
            reason="InvalidSpec",
        )
    module, _, attr = PLATFORMS[name].partition(":")
    platform: Platform = getattr(importlib.import_module(module), attr)
    return platform


def options_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Every platform's own operator settings, by name (for ``OperatorConfig``)."""
    return {name: get(name).options_from_env(env) for name in PLATFORMS}
