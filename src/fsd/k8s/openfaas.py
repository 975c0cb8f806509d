"""The operator's OpenFaaS platform: the two functions as OpenFaaS wants them, deployed and read.

:data:`OPENFAAS` is its entry in :data:`fsd.k8s.platforms.PLATFORMS`; its own settings
(``FSD_OPENFAAS_*``, ``FSD_GATEWAY_*``, ``FSD_FUNCTION_NAMESPACE``, ``FSD_FUNCTION_GATEWAY_URL``)
are :class:`OpenFaaSSettings`, in ``OperatorConfig.platform_options``. Two ways to deploy
(:class:`Deployer`):

- :class:`GatewayDeployer` (OpenFaaS CE, ``FSD_OPENFAAS_MODE=ce``): ``POST``/``PUT
  /system/functions`` through the gateway (:mod:`fsd.k8s.openfaas_gateway`), and the function
  secrets through its ``/system/secrets`` (:class:`GatewaySecrets`: ``POST`` a missing name,
  ``PUT`` a present one whose value this process has not written yet or that changed since; the
  gateway lists names, never values, so a restarted operator replaces each secret once);
- :class:`ResourceDeployer` (OpenFaaS Pro's operator mode, ``pro``): ``Function`` resources
  (``openfaas.com/v1``) created or merge-patched with the official ``kubernetes`` client, in the
  function namespace, for the OpenFaaS operator to reconcile; the secrets as Kubernetes Secrets
  (:class:`fsd.k8s.secrets.KubeSecrets`).

Either way readiness comes from the gateway (``GET /system/function/<name>``: the
``availableReplicas`` of each function against its ``com.openfaas.scale.min``, at least one),
and ``status.lastLatencySeconds`` from the gateway's histogram in Prometheus
(:mod:`fsd.k8s.openfaas_latency`). What the functions share with every platform (environment,
labels, ownership) is :mod:`fsd.k8s.desired` and :mod:`fsd.k8s.functions`.

Two shapes of the same functions:

- the gateway REST API's ``FunctionDeployment``, the body of ``POST``/``PUT /system/functions``
  (OpenFaaS CE and every edition's gateway);
- the ``Function`` custom resource (``apiVersion: openfaas.com/v1``) that the OpenFaaS operator
  reconciles (OpenFaaS Pro, "operator mode"), for ``FSD_OPENFAAS_MODE=pro``.

Field names follow OpenFaaS's own definitions, read for this module:

- the gateway's OpenAPI spec, openfaas/faas ``api-docs/spec.openapi.yml`` (``components.schemas``:
  ``FunctionDeployment`` requires ``service`` and ``image``; optional ``namespace``,
  ``envProcess``, ``constraints`` (list of strings), ``envVars``, ``labels``, ``annotations``
  (maps of strings), ``secrets`` (list of secret names), ``limits`` and ``requests``
  (``FunctionResources``: ``memory``, ``cpu``, strings), ``readOnlyRootFilesystem`` (boolean);
  ``registryAuth`` and ``network`` are deprecated and ignored. ``DeleteFunctionRequest`` is
  ``{functionName}``; ``FunctionStatus`` reports ``replicas`` and ``availableReplicas``), and the
  same structs in Go, openfaas/faas-provider ``types/model.go`` (``FunctionDeployment``,
  ``FunctionResources``, ``FunctionStatus`` with their json tags);
- the ``Function`` CRD, openfaas/faas-netes ``artifacts/crds/openfaas.com_functions.yaml``
  (group ``openfaas.com``, version ``v1``, kind ``Function``, namespaced; ``spec`` requires
  ``name`` and ``image``, and has ``annotations``, ``constraints``, ``environment`` (the env map),
  ``handler``, ``labels``, ``limits``/``requests`` (``cpu``, ``memory``),
  ``readOnlyRootFilesystem`` and ``secrets``), whose use is shown in the openfaas-operator README
  (``apiVersion: openfaas.com/v1``, ``kind: Function``, ``spec.name``/``image``/``labels``/
  ``annotations``/``environment``/``limits``/``requests``/``secrets``).

Scaling uses the labels ``com.openfaas.scale.min``/``max`` as stack.yml does. faas-netes never
scales a function below one replica on its own (``com.openfaas.scale.min`` is a lower bound the
autoscaler keeps, default 1: docs.openfaas.com/architecture/autoscaling); scaling to zero is
OpenFaaS Pro's, switched on per function by ``com.openfaas.scale.zero: "true"`` (same page, and
docs.openfaas.com/openfaas-pro/scale-to-zero). OpenFaaS CE's faas-netes refuses that label
with a 400 (faas-netes ``pkg/handlers/validate.go``, ``validateScalingLabels``: "not available
for Community Edition"). So ``spec.scaling.min: 0`` becomes ``scale.min: "1"`` (the size it wakes
up to) plus, in Pro mode, ``scale.zero: "true"``; in CE mode it is ``scale.min: "1"`` alone (CE
cannot scale to zero). A function is ready when at least one replica is available, never
because zero were required (:func:`required_replicas`).

The functions run with a read-only root filesystem (only ``/tmp`` is writable: faas-netes mounts
it, ``pkg/k8s/securityContext.go``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import urllib3
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]

from fsd import settings
from fsd.errors import InputError
from fsd.k8s import openfaas_latency as latency
from fsd.k8s.config import OperatorConfig
from fsd.k8s.desired import (
    EXTRA_THREADS,
    MANAGED_BY,
    MAX_THREADS,
    MODEL_LABEL,
    NAMESPACE_LABEL,
    OPERATOR,
    OWNER_LABEL,
    ROLE_LABEL,
    coordinator_scale,
    function_environment,
    worker_budget_mb,
    worker_scale,
)
from fsd.k8s.errors import KubernetesApiError, SourceError
from fsd.k8s.functions import NameTaken, Readiness, api_failure, kube_client, merge_patch, owned
from fsd.k8s.names import function_name, label_value
from fsd.k8s.openfaas_gateway import GATEWAY_TIMEOUT, GatewayClient, GatewayError
from fsd.k8s.secrets import KubeSecrets, SecretError, read_secrets
from fsd.k8s.spec import ModelSpec
from fsd.launch.openfaas import GATEWAY_USER
from fsd.settings import Variable

if TYPE_CHECKING:
    from fsd.k8s.platforms import Target

log = logging.getLogger(__name__)

SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"
SCALE_ZERO = "com.openfaas.scale.zero"
#: OpenFaaS CE refuses com.openfaas.scale.min/max above this (faas-netes pkg/handlers/validate.go,
#: validateScalingLabels against MaxReplicas: 400 "... is set too high for Community Edition")
CE_MAX_REPLICAS = 5
MODES = ("ce", "pro")
FUNCTION_NAMESPACE = "openfaas-fn"  # Pro's default function namespace (and CE's usual one)
FUNCTION_GROUP = "openfaas.com"
FUNCTION_VERSION = "v1"
FUNCTION_PLURAL = "functions"
GATEWAY_URL = "http://gateway.openfaas:8080"
"""The gateway inside the cluster, as the operator and the functions reach it."""
PROMETHEUS_URL = "http://prometheus.openfaas:9090"
"""OpenFaaS's Prometheus, where the operator reads latencies (``FSD_PROMETHEUS_URL``)."""

#: The gateway API's FunctionDeployment fields (spec.openapi.yml), for validation in tests too.
DEPLOYMENT_FIELDS = frozenset(
    {
        "service",
        "image",
        "namespace",
        "envProcess",
        "constraints",
        "envVars",
        "secrets",
        "labels",
        "annotations",
        "limits",
        "requests",
        "readOnlyRootFilesystem",
        "registryAuth",
        "network",
    }
)


@dataclass(frozen=True)
class OpenFaaSSettings:
    """The operator's OpenFaaS settings (see :mod:`fsd.k8s.config`'s table); the password out
    of ``repr``."""

    gateway_url: str = GATEWAY_URL  # FSD_OPENFAAS_URL
    mode: str = "ce"
    gateway_user: str = GATEWAY_USER
    gateway_password: str = field(default="", repr=False)
    gateway_password_file: str = ""
    gateway_timeout: float = GATEWAY_TIMEOUT
    function_namespace: str = ""
    function_gateway_url: str = GATEWAY_URL
    prometheus_url: str = PROMETHEUS_URL  # "": latencies not read

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"FSD_OPENFAAS_MODE must be one of {', '.join(MODES)}: {self.mode!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OpenFaaSSettings:
        text = functools.partial(settings.text, env)
        return cls(
            gateway_url=text("FSD_OPENFAAS_URL", cls.gateway_url),
            mode=settings.choice(env, "FSD_OPENFAAS_MODE", cls.mode, MODES),
            gateway_user=text("FSD_GATEWAY_USER", cls.gateway_user),
            gateway_password=text("FSD_GATEWAY_PASSWORD"),
            gateway_password_file=text("FSD_GATEWAY_PASSWORD_FILE"),
            gateway_timeout=settings.number(
                env, "FSD_GATEWAY_TIMEOUT", cls.gateway_timeout, low=0.1, high=600
            ),
            function_namespace=text("FSD_FUNCTION_NAMESPACE"),
            function_gateway_url=text("FSD_FUNCTION_GATEWAY_URL", cls.function_gateway_url),
            prometheus_url=text("FSD_PROMETHEUS_URL", cls.prometheus_url, keep_empty=True),
        )

    @property
    def pro(self) -> bool:
        return self.mode == "pro"

    @property
    def namespace_for_functions(self) -> str:
        """Where Function resources go in Pro mode (the gateway decides in CE when empty)."""
        return self.function_namespace or FUNCTION_NAMESPACE

    def password(self) -> str:
        """The gateway password: the file (if named) wins, read now so rotation is picked up."""
        if self.gateway_password_file:
            try:
                return Path(self.gateway_password_file).read_text().strip()
            except OSError as exc:
                raise InputError(
                    f"cannot read FSD_GATEWAY_PASSWORD_FILE {self.gateway_password_file}: {exc}"
                ) from None
        return self.gateway_password


def openfaas_settings(config: OperatorConfig) -> OpenFaaSSettings:
    """``config``'s OpenFaaS settings (the defaults when it has none: a config made in code)."""
    found = config.platform_options.get("openfaas")
    return found if isinstance(found, OpenFaaSSettings) else OpenFaaSSettings()


# -- the desired state ---------------------------------------------------------------------------


def replica_cap(config: OperatorConfig) -> int | None:
    """The most replicas the OpenFaaS edition allows a function (None: no limit, Pro)."""
    return None if openfaas_settings(config).pro else CE_MAX_REPLICAS


def worker_inflight(spec: ModelSpec, config: OperatorConfig) -> int:
    """Invocations one worker replica accepts (of-watchdog ``max_inflight``).

    ``FSD_MAX_INFLIGHT``, raised where CE's replica cap could not otherwise hold all ``W``
    workers at once: 64 workers on at most 5 replicas need 13 per replica.
    A replica serves them all at once (``FSD_THREADS``), at most ``MAX_THREADS`` - 2: more
    workers than the capped replicas can hold is a permanent ``InvalidSpec``.
    """
    cap = replica_cap(config)
    if cap is None:
        return config.max_inflight
    inflight = max(config.max_inflight, math.ceil(spec.workers / cap))
    if inflight + EXTRA_THREADS > MAX_THREADS:
        most = cap * (MAX_THREADS - EXTRA_THREADS)
        raise SourceError(
            f"spec.workers {spec.workers} cannot run at once on OpenFaaS CE ({cap} replicas of "
            f"at most {MAX_THREADS - EXTRA_THREADS} invocations): at most {most} workers",
            reason="InvalidSpec",
        )
    return inflight


def budget_mb(spec: ModelSpec, config: OperatorConfig) -> int:
    """MiB per worker invocation under this edition's cap (``InvalidSpec`` if none would do)."""
    return worker_budget_mb(
        spec, config, inflight=worker_inflight(spec, config), cap=replica_cap(config)
    )


def _gateway_name(config: OperatorConfig, function: str) -> str:
    """``function`` as the gateway routes it: ``<name>.<namespace>`` when one is set."""
    where = openfaas_settings(config).function_namespace
    return f"{function}.{where}" if where else function


def worker_url(config: OperatorConfig, name: str, namespace: str) -> str:
    """The worker function's URL (InferenceModel ``namespace/name``) as the functions reach it
    through the gateway."""
    function = _gateway_name(config, function_name(name, namespace, "worker"))
    return f"{openfaas_settings(config).function_gateway_url.rstrip('/')}/function/{function}"


def coordinator_url(config: OperatorConfig, name: str, namespace: str) -> str:
    """The coordinator's URL (InferenceModel ``namespace/name``) through the gateway users invoke
    (``FSD_OPENFAAS_URL``)."""
    function = _gateway_name(config, function_name(name, namespace, "coordinator"))
    return f"{openfaas_settings(config).gateway_url.rstrip('/')}/function/{function}"


def function_deployment(
    role: str,
    *,
    name: str,
    namespace: str,
    spec: ModelSpec,
    config: OperatorConfig,
    store_model: str,
    owner_uid: str = "",
) -> dict[str, Any]:
    """One function as the gateway's ``FunctionDeployment`` (``POST``/``PUT /system/functions``).

    ``owner_uid`` (the InferenceModel's ``metadata.uid``) goes into the ``fsd.dev/owner-uid``
    label: the operator touches only functions that carry its object's uid.
    """
    own = openfaas_settings(config)
    cap = replica_cap(config)
    inflight = worker_inflight(spec, config)
    low, high = (
        worker_scale(spec, inflight, cap) if role == "worker" else coordinator_scale(spec, cap)
    )
    image = spec.worker_image if role == "worker" else spec.coordinator_image
    resources = {"memory": spec.memory, "cpu": spec.cpu}
    labels = {
        SCALE_MIN: str(low),
        SCALE_MAX: str(high),
        MODEL_LABEL: label_value(name),
        NAMESPACE_LABEL: namespace,
        ROLE_LABEL: role,
        MANAGED_BY: OPERATOR,
        OWNER_LABEL: label_value(owner_uid) if owner_uid else "",
    }
    if not owner_uid:
        del labels[OWNER_LABEL]
    if spec.scale_min == 0 and own.pro:
        labels[SCALE_ZERO] = "true"
    body: dict[str, Any] = {
        "service": function_name(name, namespace, role),
        "image": image or (config.worker_image if role == "worker" else config.coordinator_image),
        "envVars": function_environment(
            role,
            spec,
            config,
            store_model,
            launcher={"FSD_WORKER_URL": worker_url(config, name, namespace)},
            inflight=inflight,
            cap=cap,
        ),
        "labels": labels,
        "annotations": {
            "prometheus.io.scrape": "true",
            "prometheus.io.port": "8080",
            "prometheus.io.path": "/metrics",
            "fsd.dev/inferencemodel": f"{namespace}/{name}",
            "fsd.dev/store-model": store_model,
        },
        "secrets": list(config.secrets),
        "limits": dict(resources),
        "requests": dict(resources),
        "readOnlyRootFilesystem": True,
    }
    if own.function_namespace:
        body["namespace"] = own.function_namespace
    return body


def function_deployments(
    *,
    name: str,
    namespace: str,
    spec: ModelSpec,
    config: OperatorConfig,
    store_model: str,
    owner_uid: str = "",
) -> list[dict[str, Any]]:
    """The coordinator and the worker function of the InferenceModel ``namespace/name``."""
    return [
        function_deployment(
            role,
            name=name,
            namespace=namespace,
            spec=spec,
            config=config,
            store_model=store_model,
            owner_uid=owner_uid,
        )
        for role in ("coordinator", "worker")
    ]


def required_replicas(deployment: dict[str, Any]) -> int:
    """Replicas a function must have available to be ready: its scale.min, and at least one.

    Zero replicas never make a model ready: a function scaled to zero is reported as such
    (``ScaledToZero``), not as served.
    """
    return max(1, int(deployment.get("labels", {}).get(SCALE_MIN, "1")))


def scales_to_zero(deployment: dict[str, Any]) -> bool:
    return bool(deployment.get("labels", {}).get(SCALE_ZERO) == "true")


def function_resource(deployment: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The same function as an ``openfaas.com/v1`` ``Function`` resource in ``namespace``."""
    labels = deployment.get("labels", {})
    spec: dict[str, Any] = {
        "name": deployment["service"],
        "image": deployment["image"],
        "labels": dict(labels),
        "annotations": dict(deployment.get("annotations", {})),
        "environment": dict(deployment.get("envVars", {})),
        "secrets": list(deployment.get("secrets", [])),
        "readOnlyRootFilesystem": bool(deployment.get("readOnlyRootFilesystem", False)),
    }
    for key in ("limits", "requests"):
        if key in deployment:
            spec[key] = dict(deployment[key])
    return {
        "apiVersion": f"{FUNCTION_GROUP}/{FUNCTION_VERSION}",
        "kind": "Function",
        "metadata": {
            "name": deployment["service"],
            "namespace": namespace,
            "labels": {
                k: labels[k]
                for k in (MANAGED_BY, MODEL_LABEL, NAMESPACE_LABEL, ROLE_LABEL, OWNER_LABEL)
                if k in labels
            },
        },
        "spec": spec,
    }


# -- deploying -----------------------------------------------------------------------------------


class Deployer(Protocol):
    def apply(self, deployments: Sequence[dict[str, Any]], owner_uid: str) -> None: ...

    def remove(self, names: Sequence[str], owner_uid: str) -> None: ...


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
            raise api_failure(exc, what) from None

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
    own = openfaas_settings(config)
    if not own.pro:
        return GatewayDeployer(gateway), None
    try:
        api_client = kube_client(config)
    except Exception as exc:  # no in-cluster config and no kubeconfig
        raise KubernetesApiError(
            f"Pro mode needs the Kubernetes API: {exc}", temporary=False
        ) from None
    return ResourceDeployer(api_client, own.namespace_for_functions), api_client


def gateway_client(config: OperatorConfig) -> GatewayClient:
    """The gateway the operator deploys through; temporary when its password is not there yet."""
    own = openfaas_settings(config)
    try:
        password = own.password()
    except InputError as exc:  # the mounted secret may appear later: retry
        raise GatewayError(str(exc), temporary=True) from None
    return GatewayClient(
        own.gateway_url,
        user=own.gateway_user,
        password=password,
        timeout=own.gateway_timeout,
        namespace=own.function_namespace,
    )


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class GatewaySecrets:
    """CE: the gateway's ``/system/secrets``; ``written`` remembers digests of what we wrote."""

    def __init__(self, gateway: GatewayClient, written: MutableMapping[str, str]) -> None:
        self.gateway = gateway
        self.written = written

    def ensure(self, values: Mapping[str, str]) -> None:
        try:
            present = self.gateway.secret_names()
        except GatewayError as exc:
            if not exc.temporary:
                raise SecretError(f"cannot list secrets: {exc}", "SecretRejected") from None
            raise
        for name, value in values.items():
            key, want = f"{self.gateway.url}#{self.gateway.namespace}#{name}", digest(value)
            if name in present and self.written.get(key) == want:
                continue
            try:
                try:
                    self.gateway.put_secret(name, value, exists=name in present)
                except GatewayError as exc:
                    if exc.status != 409:
                        raise
                    # created meanwhile (another object's reconcile): replace it
                    self.gateway.put_secret(name, value, exists=True)
            except GatewayError as exc:
                if exc.temporary and (exc.status is None or exc.reason == "GatewayUnauthorized"):
                    raise  # unreachable, or our password: the gateway's reason says it best
                raise SecretError(f"secret {name} refused: {exc}", "SecretRejected") from None
            self.written[key] = want


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
                namespace = openfaas_settings(self.config).namespace_for_functions
                KubeSecrets(api_client, namespace).ensure(values)
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
    operator's ``FSD_OPENFAAS_*`` and gateway ones (:class:`OpenFaaSSettings`)."""

    VARIABLES = (
        Variable(
            "FSD_OPENFAAS_URL",
            "OpenFaaS: the gateway the operator deploys through (also read for status in Pro)",
            default=OpenFaaSSettings.gateway_url,
        ),
        Variable(
            "FSD_OPENFAAS_MODE",
            "OpenFaaS: `ce` (the gateway's REST API) or `pro` (`Function` resources of the "
            "OpenFaaS operator, `openfaas.com/v1`)",
            default=OpenFaaSSettings.mode,
        ),
        Variable(
            "FSD_GATEWAY_USER",
            "OpenFaaS: the gateway's basic-auth user",
            default=OpenFaaSSettings.gateway_user,
        ),
        Variable(
            "FSD_GATEWAY_PASSWORD", "OpenFaaS: the gateway's basic-auth password", secret=True
        ),
        Variable(
            "FSD_GATEWAY_PASSWORD_FILE",
            "OpenFaaS: a file holding that password (read on every use: rotated secrets work)",
        ),
        Variable(
            "FSD_GATEWAY_TIMEOUT",
            "OpenFaaS: seconds per gateway request (0.1..600)",
            default=f"{OpenFaaSSettings.gateway_timeout:g}",
        ),
        Variable(
            "FSD_FUNCTION_NAMESPACE",
            f"OpenFaaS: where functions go (CE: the gateway's, usually `{FUNCTION_NAMESPACE}`; "
            f"Pro: `{FUNCTION_NAMESPACE}`)",
        ),
        Variable(
            "FSD_FUNCTION_GATEWAY_URL",
            "OpenFaaS: the gateway as the functions see it, for FSD_WORKER_URL",
            default=OpenFaaSSettings.function_gateway_url,
        ),
        Variable(
            "FSD_PROMETHEUS_URL",
            "OpenFaaS: where `status.lastLatencySeconds` comes from (the gateway's histogram); "
            "blank: not reported",
            default=OpenFaaSSettings.prometheus_url,
        ),
    )

    def options_from_env(self, env: Mapping[str, str]) -> OpenFaaSSettings:
        return OpenFaaSSettings.from_env(env)

    def check(self, spec: ModelSpec, config: OperatorConfig) -> None:
        budget_mb(spec, config)

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

    def latency(self, config: OperatorConfig, function: str) -> float | None:
        """The gateway's histogram of ``function`` in Prometheus (:mod:`.openfaas_latency`)."""
        own = openfaas_settings(config)
        return latency.last_latency(
            own.prometheus_url,
            function,
            own.namespace_for_functions,
            timeout=own.gateway_timeout,
        )

    @contextmanager
    def session(self, config: OperatorConfig) -> Iterator[OpenFaaSSession]:
        opened = OpenFaaSSession(config)
        try:
            yield opened
        finally:
            opened.close()


OPENFAAS = OpenFaaS()
