"""The two OpenFaaS functions an InferenceModel needs, as pure data.

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

Scaling uses the labels ``com.openfaas.scale.min``/``max`` as stack.yml does; the environment
mirrors stack.yml's (timeouts chained worker < coordinator < gateway, see docs/deploy-openfaas.md).
"""

from __future__ import annotations

import math
from typing import Any

from fsd.k8s.config import OperatorConfig
from fsd.k8s.names import function_name, label_value
from fsd.k8s.spec import ModelSpec

SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fsd-operator"
MODEL_LABEL = "fsd.dev/model"
NAMESPACE_LABEL = "fsd.dev/namespace"
ROLE_LABEL = "fsd.dev/role"
COORDINATOR_MAX = 8  # stack.yml's coordinator scale.max

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

# stack.yml: per-function timeouts (Go durations) and drain times, one chain from the client
_TIMEOUTS = {
    "coordinator": {"exec_timeout": "310s", "read_timeout": "315s", "write_timeout": "315s"},
    "worker": {"exec_timeout": "300s", "read_timeout": "305s", "write_timeout": "305s"},
}
_DRAIN = {"coordinator": "315", "worker": "305"}


def worker_scale(spec: ModelSpec, max_inflight: int) -> tuple[int, int]:
    """(min, max) replicas of the worker function.

    A replica accepts ``max_inflight`` invocations before answering 429, so ``W`` workers want
    ``ceil(W / max_inflight)`` replicas up front (docs/deploy-openfaas.md, "Replicas"), within
    ``spec.scaling``; ``scaling.min: 0`` keeps scale-to-zero.
    """
    if spec.scale_min == 0:
        return 0, spec.scale_max
    wanted = max(spec.scale_min, math.ceil(spec.workers / max_inflight))
    low = min(wanted, spec.scale_max)
    return low, max(spec.scale_max, low)


def coordinator_scale(spec: ModelSpec) -> tuple[int, int]:
    """(min, max) replicas of the coordinator: one (none with scale-to-zero), up to 8."""
    return (1 if spec.scale_min > 0 else 0), COORDINATOR_MAX


def worker_url(config: OperatorConfig, model: str) -> str:
    """The worker function's URL as the functions reach it through the gateway."""
    name = function_name(model, "worker")
    if config.function_namespace:
        name = f"{name}.{config.function_namespace}"
    return f"{config.function_gateway_url.rstrip('/')}/function/{name}"


def _environment(
    role: str, spec: ModelSpec, config: OperatorConfig, model: str, store_model: str
) -> dict[str, str]:
    env = {
        "FSD_NATS_URL": config.nats_url,
        "FSD_S3_ENDPOINT": config.function_s3_endpoint or config.store.address,
        "FSD_S3_BUCKET": config.store.bucket,
        "FSD_WORKER_URL": worker_url(config, model),
        "FSD_CHANNEL": spec.channel,
        # the one model these functions serve: any other in the store is a 404 (docs/api.md)
        "FSD_MODELS": store_model,
        # the coordinator's fan-out; workers refuse invocations that carry a larger one
        "FSD_FANOUT": str(config.fanout),
        **_TIMEOUTS[role],
        "healthcheck_interval": "5s",
        "FSD_SHUTDOWN_DELAY_SECONDS": "5",
        "FSD_DRAIN_SECONDS": _DRAIN[role],
    }
    if role == "worker":
        env["max_inflight"] = str(config.max_inflight)
    return env


def function_deployment(
    role: str,
    *,
    name: str,
    namespace: str,
    spec: ModelSpec,
    config: OperatorConfig,
    store_model: str,
) -> dict[str, Any]:
    """One function as the gateway's ``FunctionDeployment`` (``POST``/``PUT /system/functions``)."""
    low, high = (
        worker_scale(spec, config.max_inflight) if role == "worker" else coordinator_scale(spec)
    )
    image = spec.worker_image if role == "worker" else spec.coordinator_image
    resources = {"memory": spec.memory, "cpu": spec.cpu}
    body: dict[str, Any] = {
        "service": function_name(name, role),
        "image": image or (config.worker_image if role == "worker" else config.coordinator_image),
        "envVars": _environment(role, spec, config, name, store_model),
        "labels": {
            SCALE_MIN: str(low),
            SCALE_MAX: str(high),
            MODEL_LABEL: label_value(name),
            NAMESPACE_LABEL: namespace,
            ROLE_LABEL: role,
            MANAGED_BY: OPERATOR,
        },
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
        "readOnlyRootFilesystem": False,
    }
    if config.function_namespace:
        body["namespace"] = config.function_namespace
    return body


def function_deployments(
    *, name: str, namespace: str, spec: ModelSpec, config: OperatorConfig, store_model: str
) -> list[dict[str, Any]]:
    """The coordinator and the worker function of the InferenceModel ``namespace/name``."""
    return [
        function_deployment(
            role, name=name, namespace=namespace, spec=spec, config=config, store_model=store_model
        )
        for role in ("coordinator", "worker")
    ]


def required_replicas(deployment: dict[str, Any]) -> int:
    """Replicas a deployed function must have available to be ready: its scale.min."""
    return int(deployment.get("labels", {}).get(SCALE_MIN, "1"))


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
        "apiVersion": "openfaas.com/v1",
        "kind": "Function",
        "metadata": {
            "name": deployment["service"],
            "namespace": namespace,
            "labels": {
                k: labels[k] for k in (MANAGED_BY, MODEL_LABEL, NAMESPACE_LABEL, ROLE_LABEL)
            },
        },
        "spec": spec,
    }
