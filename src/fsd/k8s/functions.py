"""What every platform of the operator shares to deploy functions and say how they are doing.

Ownership (contract 2): every function carries ``fsd.dev/owner-uid: <InferenceModel uid>``.
Before an update or a delete a platform reads the function and touches it only if that label is
this object's uid (:func:`owned`); a function of another owner (another namespace's model whose
name maps to the same function, or one deployed by hand) is never updated or deleted: deploying
raises :class:`NameTaken` (``FunctionNameTaken``, temporary: retried, so the model recovers once
the name is free), and deleting leaves it be. A platform reports its functions' state as one
:class:`Readiness`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]
from kubernetes import config as kubeconfig

from fsd.k8s.config import OperatorConfig
from fsd.k8s.desired import OWNER_LABEL
from fsd.k8s.errors import KubernetesApiError, ReconcileError
from fsd.k8s.names import label_value


class NameTaken(ReconcileError):
    """A function of this name exists and belongs to someone else: retried, never touched."""

    def __init__(self, name: str, owner: str) -> None:
        whose = f"InferenceModel uid {owner}" if owner else "nobody the operator knows"
        super().__init__(
            f"function {name} exists and belongs to {whose}: not updated; rename this "
            "InferenceModel or delete that function",
            temporary=True,
            reason="FunctionNameTaken",
        )


def owned(labels: Any, owner_uid: str) -> bool:
    """Whether a function with ``labels`` belongs to the object of ``owner_uid``."""
    return bool(owner_uid) and (labels or {}).get(OWNER_LABEL) == label_value(owner_uid)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (keys gone: ``None``)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def kube_client(config: OperatorConfig) -> Any:
    """An official ``kubernetes`` ApiClient: ``FSD_KUBE_URL``, in-cluster, or the kubeconfig."""
    configuration = kube.Configuration()
    if config.kube_url:
        configuration.host = config.kube_url
    else:
        try:
            kubeconfig.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kubeconfig.ConfigException:
            kubeconfig.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return kube.ApiClient(configuration)


def api_failure(exc: Exception, what: str) -> KubernetesApiError:
    status = getattr(exc, "status", None)
    temporary = status is None or status in (401, 403, 409, 429) or int(status) >= 500
    reason = getattr(exc, "reason", "") or type(exc).__name__
    return KubernetesApiError(
        f"Kubernetes API: cannot {what}: {status or ''} {reason}".strip(), temporary=temporary
    )


@dataclass(frozen=True)
class Readiness:
    """How the deployed functions are doing, according to their platform."""

    ready: bool
    ready_workers: int | None  # available replicas of the worker function (None: not known)
    missing: tuple[str, ...]  # functions the platform does not know
    message: str
    idle: tuple[str, ...] = ()  # scale-to-zero functions at zero replicas (the idler's doing)
    #: the ``Ready`` condition's reason when not ready ("": from the fields above)
    reason: str = ""
    #: where each function is invoked, when the platform says (Knative's ``status.url``)
    urls: Mapping[str, str] | None = None

    @property
    def ready_reason(self) -> str:
        if self.ready:
            return "Ready"
        if self.reason:
            return self.reason
        if self.missing:
            return "FunctionsMissing"
        return "ScaledToZero" if self.idle else "WaitingForReplicas"
