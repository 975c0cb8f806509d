"""The operator's OpenFaaS platform: deploying the functions, reading whether they are ready.

:data:`OPENFAAS` is its entry in :data:`fsd.k8s.platforms.PLATFORMS`. Two ways to deploy
(:class:`Deployer`):

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
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import urllib3
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]
from kubernetes import config as kubeconfig

from fsd.errors import InputError
from fsd.k8s.config import OperatorConfig
from fsd.k8s.desired import (
    OWNER_LABEL,
    ROLE_LABEL,
    coordinator_url,
    function_deployments,
    function_resource,
    required_replicas,
    scales_to_zero,
    worker_budget_mb,
)
from fsd.k8s.errors import KubernetesApiError, ReconcileError
from fsd.k8s.names import function_name, label_value
from fsd.k8s.openfaas import GatewayClient, GatewayError
from fsd.k8s.secrets import GatewaySecrets, KubeSecrets, read_secrets

if TYPE_CHECKING:
    from fsd.k8s.platforms import Target
    from fsd.k8s.spec import ModelSpec

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


def gateway_client(config: OperatorConfig) -> GatewayClient:
    """The gateway the operator deploys through; temporary when its password is not there yet."""
    try:
        password = config.password()
    except InputError as exc:  # the mounted secret may appear later: retry
        raise GatewayError(str(exc), temporary=True) from None
    return GatewayClient(
        config.gateway_url,
        user=config.gateway_user,
        password=password,
        timeout=config.gateway_timeout,
        namespace=config.function_namespace,
    )


class OpenFaaSSession:
    """One reconcile's gateway (and, in Pro mode, Kubernetes API) connection."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.gateway = gateway_client(config)

    def apply(
        self, desired: Sequence[dict[str, Any]], owner_uid: str, memo: MutableMapping[str, Any]
    ) -> None:
        """The function secrets, then the functions (secrets first: faas-netes needs them)."""
        values = read_secrets(self.config.secrets_dir, self.config.secrets)
        chosen, api_client = deployer(self.config, self.gateway)
        try:
            if api_client is not None:
                KubeSecrets(api_client, self.config.namespace_for_functions).ensure(values)
            else:  # digests of what this process wrote, shared by every object's reconcile
                written = memo.setdefault("openfaas_secret_digests", {})
                GatewaySecrets(self.gateway, written).ensure(values)
            chosen.apply(desired, owner_uid)
        finally:
            if api_client is not None:
                api_client.close()

    def remove(self, names: Sequence[str], owner_uid: str) -> None:
        chosen, api_client = deployer(self.config, self.gateway)
        try:
            chosen.remove(names, owner_uid)
        finally:
            if api_client is not None:
                api_client.close()

    def readiness(self, desired: Sequence[dict[str, Any]]) -> Readiness:
        return readiness(self.gateway, desired)

    def close(self) -> None:
        self.gateway.close()


class OpenFaaS:
    """The OpenFaaS platform (:class:`fsd.k8s.platforms.Platform`); its settings are the
    operator's ``FSD_OPENFAAS_*`` and gateway ones (:class:`OperatorConfig`)."""

    def options_from_env(self, env: Mapping[str, str]) -> None:
        return None

    def check(self, spec: ModelSpec, config: OperatorConfig) -> None:
        worker_budget_mb(spec, config)

    def desired(self, target: Target, config: OperatorConfig) -> list[dict[str, Any]]:
        return function_deployments(
            name=target.name,
            namespace=target.namespace,
            spec=target.spec,
            config=config,
            store_model=target.model,
            owner_uid=target.uid,
        )

    def name_of(self, desired: Mapping[str, Any]) -> str:
        return str(desired["service"])

    def coordinator(
        self, config: OperatorConfig, name: str, namespace: str, state: Readiness | None = None
    ) -> dict[str, str]:
        return {
            "function": function_name(name, namespace, "coordinator"),
            "url": coordinator_url(config, name, namespace),
        }

    def functions_namespace(self, config: OperatorConfig) -> str:
        return config.namespace_for_functions

    @contextmanager
    def session(self, config: OperatorConfig) -> Iterator[OpenFaaSSession]:
        opened = OpenFaaSSession(config)
        try:
            yield opened
        finally:
            opened.close()


OPENFAAS = OpenFaaS()
