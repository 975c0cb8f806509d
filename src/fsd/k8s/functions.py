"""Deploying the functions, and reading whether they are ready.

Two ways to deploy (:class:`Deployer`):

- :class:`GatewayDeployer` (OpenFaaS CE, ``FSD_OPENFAAS_MODE=ce``): ``POST``/``PUT
  /system/functions`` through the gateway (:mod:`fsd.k8s.openfaas`);
- :class:`ResourceDeployer` (OpenFaaS Pro's operator mode, ``pro``): ``Function`` resources
  (``openfaas.com/v1``) created or merge-patched with the official ``kubernetes`` client, in the
  function namespace, for the OpenFaaS operator to reconcile.

Either way readiness comes from the gateway (``GET /system/function/<name>``: the
``availableReplicas`` of each function against its ``com.openfaas.scale.min``).
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
from fsd.k8s.desired import ROLE_LABEL, function_resource, required_replicas
from fsd.k8s.errors import KubernetesApiError
from fsd.k8s.openfaas import GatewayClient

log = logging.getLogger(__name__)

FUNCTION_GROUP = "openfaas.com"
FUNCTION_VERSION = "v1"
FUNCTION_PLURAL = "functions"


class Deployer(Protocol):
    def apply(self, deployments: Sequence[dict[str, Any]]) -> None: ...

    def remove(self, names: Sequence[str]) -> None: ...


class GatewayDeployer:
    """Functions deployed through the gateway's REST API."""

    def __init__(self, gateway: GatewayClient) -> None:
        self.gateway = gateway

    def apply(self, deployments: Sequence[dict[str, Any]]) -> None:
        for deployment in deployments:
            self.gateway.deploy(deployment)

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
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

    def apply(self, deployments: Sequence[dict[str, Any]]) -> None:
        for deployment in deployments:
            body = function_resource(deployment, self.namespace)
            name = body["metadata"]["name"]
            existing = self.get(name)
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

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
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


def readiness(gateway: GatewayClient, deployments: Sequence[dict[str, Any]]) -> Readiness:
    """Ready when every function has at least its ``scale.min`` replicas available."""
    missing: list[str] = []
    waiting: list[str] = []
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
        if status.available_replicas < need:
            waiting.append(f"{name} {status.available_replicas}/{need}")
    if missing:
        message = f"not deployed yet: {', '.join(missing)}"
    elif waiting:
        message = f"waiting for replicas: {', '.join(waiting)}"
    else:
        message = "all functions have their replicas available"
    return Readiness(not missing and not waiting, ready_workers, tuple(missing), message)


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
