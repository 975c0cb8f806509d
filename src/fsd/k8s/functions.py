"""Deploying the functions, and reading whether they are ready.

Two ways to deploy (:class:`Deployer`):

- :class:`GatewayDeployer` (OpenFaaS CE, ``FSD_OPENFAAS_MODE=ce``): ``POST``/``PUT
  /system/functions`` through the gateway (:mod:`fsd.k8s.openfaas`);
- :class:`ResourceDeployer` (OpenFaaS Pro's operator mode, ``pro``): ``Function`` resources
  (``openfaas.com/v1``) created or merge-patched with the official ``kubernetes`` client, in the
  function namespace, for the OpenFaaS operator to reconcile.

Either way readiness comes from the gateway (``GET /system/function/<name>``: the
``availableReplicas`` of each function against its ``com.openfaas.scale.min``, at least one).

Ownership (contract 2): every function carries ``fsd.dev/owner-uid: <InferenceModel uid>``.
Before an update or a delete the deployer reads the function and touches it only if that label
is this object's uid; a function of another owner (another namespace's model whose name maps to
the same function, or one deployed by hand) is never updated or deleted: deploying raises
``FunctionNameTaken`` (temporary: retried, so the model recovers once the name is free), and
deleting leaves it be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]
from kubernetes import config as kubeconfig

from fsd.k8s.config import OperatorConfig
from fsd.k8s.desired import (
    OWNER_LABEL,
    ROLE_LABEL,
    function_resource,
    required_replicas,
    scales_to_zero,
)
from fsd.k8s.errors import KubernetesApiError, ReconcileError
from fsd.k8s.names import label_value
from fsd.k8s.openfaas import GatewayClient

log = logging.getLogger(__name__)

FUNCTION_GROUP = "openfaas.com"
FUNCTION_VERSION = "v1"
FUNCTION_PLURAL = "functions"


class Deployer(Protocol):
    def apply(self, deployments: Sequence[dict[str, Any]], owner_uid: str) -> None: ...

    def remove(self, names: Sequence[str], owner_uid: str) -> None: ...


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


class GatewayDeployer:
    """Functions deployed through the gateway's REST API."""

    def __init__(self, gateway: GatewayClient) -> None:
        self.gateway = gateway

    def apply(self, deployments: Sequence[dict[str, Any]], owner_uid: str) -> None:
        for deployment in deployments:
            name = str(deployment["service"])
            found = self.gateway.status(name)
            if found is None:
                self.gateway.create(deployment)
            elif not owned(found.labels, owner_uid):
                raise NameTaken(name, found.labels.get(OWNER_LABEL, ""))
            elif not self.gateway.update(deployment):
                self.gateway.create(deployment)  # deleted between our GET and PUT

    def remove(self, names: Sequence[str], owner_uid: str) -> None:
        for name in names:
            found = self.gateway.status(name)
            if found is None:
                continue
            if not owned(found.labels, owner_uid):
                log.warning("function %s is not this object's: left in place", name)
                continue
            self.gateway.delete(name)


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


def _api_failure(exc: Exception, what: str) -> KubernetesApiError:
    status = getattr(exc, "status", None)
    temporary = status is None or status in (401, 403, 409, 429) or int(status) >= 500
    reason = getattr(exc, "reason", "") or type(exc).__name__
    return KubernetesApiError(
        f"Kubernetes API: cannot {what}: {status or ''} {reason}".strip(), temporary=temporary
    )


class ResourceDeployer:
    """Functions as ``openfaas.com/v1`` ``Function`` resources (OpenFaaS Pro, operator mode)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self._api = kube.CustomObjectsApi(api_client)
        self._errors: tuple[type[Exception], ...] = (
            kube.ApiException,
            urllib3.exceptions.HTTPError,
        )
        self.namespace = namespace

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False) -> Any:
        """``fn`` on our Function resources; None for a 404 when ``missing_ok``."""
        try:
            return fn(FUNCTION_GROUP, FUNCTION_VERSION, self.namespace, FUNCTION_PLURAL, *args)
        except self._errors as exc:
            if missing_ok and getattr(exc, "status", None) == 404:
                return None
            raise _api_failure(exc, what) from None

    def get(self, name: str) -> dict[str, Any] | None:
        found = self._call(
            f"read Function {name}", self._api.get_namespaced_custom_object, name, missing_ok=True
        )
        return dict(found) if isinstance(found, dict) else None

    def apply(self, deployments: Sequence[dict[str, Any]], owner_uid: str) -> None:
        for deployment in deployments:
            body = function_resource(deployment, self.namespace)
            name = body["metadata"]["name"]
            existing = self.get(name)
            if existing is not None and not owned(
                existing.get("metadata", {}).get("labels"), owner_uid
            ):
                theirs = (existing.get("metadata", {}).get("labels") or {}).get(OWNER_LABEL, "")
                raise NameTaken(name, str(theirs))
            if existing is None:
                self._call(
                    f"create Function {name}", self._api.create_namespaced_custom_object, body
                )
                log.info("created Function %s/%s", self.namespace, name)
                continue
            patch: dict[str, Any] = {}
            spec = merge_patch(existing.get("spec", {}), body["spec"])
            # our labels only: others may label the resource too
            present = existing.get("metadata", {}).get("labels") or {}
            labels = {k: v for k, v in body["metadata"]["labels"].items() if present.get(k) != v}
            if spec:
                patch["spec"] = spec
            if labels:
                patch["metadata"] = {"labels": labels}
            if patch:
                self._call(
                    f"update Function {name}", self._api.patch_namespaced_custom_object, name, patch
                )
                log.info("updated Function %s/%s", self.namespace, name)

    def remove(self, names: Sequence[str], owner_uid: str) -> None:
        for name in names:
            existing = self.get(name)
            if existing is None:
                continue
            if not owned(existing.get("metadata", {}).get("labels"), owner_uid):
                log.warning(
                    "Function %s/%s is not this object's: left in place", self.namespace, name
                )
                continue
            self._call(
                f"delete Function {name}",
                self._api.delete_namespaced_custom_object,
                name,
                missing_ok=True,
            )


@dataclass(frozen=True)
class Readiness:
    """How the deployed functions are doing, according to the gateway."""

    ready: bool
    ready_workers: int  # availableReplicas of the worker function
    missing: tuple[str, ...]  # functions the gateway does not know
    message: str
    idle: tuple[str, ...] = ()  # scale-to-zero functions at zero replicas (the idler's doing)


def readiness(gateway: GatewayClient, deployments: Sequence[dict[str, Any]]) -> Readiness:
    """Ready when every function has at least its ``scale.min`` replicas available (and one).

    A function that may scale to zero and has no replica (none wanted, none available) is
    *idle*, not ready: the next invocation wakes it with a cold start. The model then reports
    ``Ready=False`` with reason ``ScaledToZero`` (phase Deploying), never Ready on 0 replicas.
    """
    missing: list[str] = []
    waiting: list[str] = []
    idle: list[str] = []
    ready_workers = 0
    for deployment in deployments:
        name = str(deployment["service"])
        status = gateway.status(name)
        if status is None:
            missing.append(name)
            continue
        need = required_replicas(deployment)
        if deployment.get("labels", {}).get(ROLE_LABEL) == "worker":
            ready_workers = status.available_replicas
        if status.available_replicas >= need:
            continue
        if scales_to_zero(deployment) and status.replicas == 0:
            idle.append(name)
        else:
            waiting.append(f"{name} {status.available_replicas}/{need}")
    if missing:
        message = f"not deployed yet: {', '.join(missing)}"
    elif waiting:
        message = f"waiting for replicas: {', '.join(waiting)}"
    elif idle:
        message = f"scaled to zero (the next invocation starts them): {', '.join(idle)}"
    else:
        message = "all functions have their replicas available"
    ready = not missing and not waiting and not idle
    return Readiness(ready, ready_workers, tuple(missing), message, tuple(idle))


def deployer(config: OperatorConfig, gateway: GatewayClient) -> tuple[Deployer, Any]:
    """The deployer for the configured mode, and a Kubernetes client to close (or None)."""
    if not config.pro:
        return GatewayDeployer(gateway), None
    try:
        api_client = kube_client(config)
    except Exception as exc:  # no in-cluster config and no kubeconfig
        raise KubernetesApiError(
            f"Pro mode needs the Kubernetes API: {exc}", temporary=False
        ) from None
    return ResourceDeployer(api_client, config.namespace_for_functions), api_client
