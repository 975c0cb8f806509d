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

The environment mirrors stack.yml's (timeouts chained worker < coordinator < gateway, see
docs/deploy-openfaas.md): of-watchdog cuts a request at ``exec_timeout`` with a non-JSON
answer, so ``FSD_MAX_TIMEOUT`` (the longest ``timeout``/``layer_timeout`` a request may ask)
is ``exec_timeout`` less :data:`fsd.settings.EXEC_MARGIN`, the one margin the functions check
(:mod:`fsd.functions.config`), and both functions get one ``FSD_TIMEOUT`` default.

Threads: the worker's of-watchdog admits ``max_inflight`` invocations at once and every worker of
one inference must run at the same time (they exchange layers), so index.py serves them with
``FSD_THREADS`` = ``max_inflight`` + 2 threads (two more for health checks and metrics scrapes);
fewer would queue admitted workers behind running ones until the layer timeout.

Shutdown: of-watchdog stops accepting ``healthcheck_interval`` after SIGTERM (of-watchdog
``pkg/watchdog.go``, ``listenUntilShutdown``); index.py closes its listener
``FSD_SHUTDOWN_DELAY_SECONDS`` after it, 2 s later, so a request the watchdog admitted at the
last moment still finds it open. Functions run with a
read-only root filesystem (only ``/tmp`` is writable: faas-netes mounts it,
``pkg/k8s/securityContext.go``).
"""

from __future__ import annotations

import math
from typing import Any

from fsd.k8s.config import OperatorConfig
from fsd.k8s.errors import SourceError
from fsd.k8s.names import function_name, label_value
from fsd.k8s.spec import ModelSpec, memory_mib
from fsd.planner import BASE_MB
from fsd.settings import EXEC_MARGIN, TIMEOUT

SCALE_MIN = "com.openfaas.scale.min"
SCALE_MAX = "com.openfaas.scale.max"
SCALE_ZERO = "com.openfaas.scale.zero"
OWNER_LABEL = "fsd.dev/owner-uid"
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fsd-operator"
MODEL_LABEL = "fsd.dev/model"
NAMESPACE_LABEL = "fsd.dev/namespace"
ROLE_LABEL = "fsd.dev/role"
COORDINATOR_MAX = 8  # stack.yml's coordinator scale.max
#: OpenFaaS CE refuses com.openfaas.scale.min/max above this (faas-netes pkg/handlers/validate.go,
#: validateScalingLabels against MaxReplicas: 400 "... is set too high for Community Edition")
CE_MAX_REPLICAS = 5

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

# stack.yml: per-function timeouts (Go durations) and drain times, one chain from the client;
# FSD_MAX_TIMEOUT is at most exec_timeout - EXEC_MARGIN, so the function answers (JSON) before
# its watchdog cuts it, and the coordinator's is no longer than its workers' (they run the whole
# inference for it: a longer deadline would let a worker's watchdog cut the run first)
EXEC_SECONDS = {"coordinator": 310, "worker": 300}
DEFAULT_TIMEOUT = int(TIMEOUT)  # FSD_TIMEOUT: the functions' own default, set in both
_DRAIN = {"coordinator": "315", "worker": "305"}
HEALTHCHECK_SECONDS = 5  # of-watchdog's healthcheck_interval
SHUTDOWN_AFTER = 2  # seconds index.py keeps its listener open after the watchdog stops accepting
EXTRA_THREADS = 2  # index.py threads beyond max_inflight: health checks and metrics scrapes
#: the most FSD_THREADS index.py accepts (template/fsd-python3-http/index.py, Settings.from_env)
MAX_THREADS = 256


def max_timeout(role: str) -> int:
    """``FSD_MAX_TIMEOUT`` of ``role``: its ``exec_timeout`` less the functions' margin, and for
    the coordinator no more than the workers' (see above)."""
    own = int(EXEC_SECONDS[role] - EXEC_MARGIN)
    return own if role == "worker" else min(own, max_timeout("worker"))


def _timeouts(role: str) -> dict[str, str]:
    exec_seconds = EXEC_SECONDS[role]
    return {
        "exec_timeout": f"{exec_seconds}s",
        "read_timeout": f"{exec_seconds + 5}s",
        "write_timeout": f"{exec_seconds + 5}s",
        "FSD_TIMEOUT": str(min(DEFAULT_TIMEOUT, max_timeout(role))),
        "FSD_MAX_TIMEOUT": str(max_timeout(role)),
    }


def replica_cap(config: OperatorConfig) -> int | None:
    """The most replicas the OpenFaaS edition allows a function (None: no limit, Pro)."""
    return None if config.pro else CE_MAX_REPLICAS


def worker_inflight(spec: ModelSpec, config: OperatorConfig, *, capped: bool = True) -> int:
    """Invocations one worker replica accepts (of-watchdog ``max_inflight``).

    ``FSD_MAX_INFLIGHT``, raised where CE's replica cap could not otherwise hold all ``W``
    workers at once: 64 workers on at most 5 replicas need 13 per replica.
    A replica serves them all at once (``FSD_THREADS``), at most ``MAX_THREADS`` - 2: more
    workers than the capped replicas can hold is a permanent ``InvalidSpec``. ``capped``
    False: a platform without CE's cap (Knative), ``FSD_MAX_INFLIGHT`` as it is.
    """
    cap = replica_cap(config) if capped else None
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


def worker_scale(spec: ModelSpec, max_inflight: int, cap: int | None = None) -> tuple[int, int]:
    """(min, max) replicas of the worker function.

    A replica accepts ``max_inflight`` invocations before answering 429, so ``W`` workers want
    ``ceil(W / max_inflight)`` replicas up front (docs/deploy-openfaas.md, "Replicas"), within
    ``spec.scaling`` and the edition's ``cap``; ``scaling.min: 0`` (scale to zero) wakes up to
    one replica.
    """
    if spec.scale_min == 0:
        low, high = 1, spec.scale_max
    else:
        wanted = max(spec.scale_min, math.ceil(spec.workers / max_inflight))
        low = min(wanted, spec.scale_max)
        high = max(spec.scale_max, low)
    return (low, high) if cap is None else (min(low, cap), min(high, cap))


def coordinator_scale(spec: ModelSpec, cap: int | None = None) -> tuple[int, int]:
    """(min, max) replicas of the coordinator: one (scaled to zero when idle, if asked), up to 8."""
    return 1, COORDINATOR_MAX if cap is None else min(COORDINATOR_MAX, cap)


def worker_url(config: OperatorConfig, name: str, namespace: str) -> str:
    """The worker function's URL (InferenceModel ``namespace/name``) as the functions reach it
    through the gateway."""
    name = function_name(name, namespace, "worker")
    if config.function_namespace:
        name = f"{name}.{config.function_namespace}"
    return f"{config.function_gateway_url.rstrip('/')}/function/{name}"


def coordinator_url(config: OperatorConfig, name: str, namespace: str) -> str:
    """The coordinator's URL (InferenceModel ``namespace/name``) through the gateway users invoke
    (``FSD_OPENFAAS_URL``)."""
    name = function_name(name, namespace, "coordinator")
    if config.function_namespace:
        name = f"{name}.{config.function_namespace}"
    return f"{config.gateway_url.rstrip('/')}/function/{name}"


def function_environment(
    role: str,
    spec: ModelSpec,
    config: OperatorConfig,
    store_model: str,
    *,
    launcher: dict[str, str],
    inflight: int,
) -> dict[str, str]:
    """The environment of ``role``: the platform's ``launcher`` variables (how it invokes the
    worker function: :meth:`fsd.launch.LauncherOptions.to_env`) and ``inflight`` invocations per
    worker replica, the rest the same on every platform (the image is)."""
    env = {
        "FSD_NATS_URL": config.nats_url,
        "FSD_S3_ENDPOINT": config.function_s3_endpoint or config.store.endpoint,
        "FSD_S3_BUCKET": config.store.bucket,
        **launcher,
        "FSD_CHANNEL": spec.channel,
        # the transports the chart runs: a request may choose only among them (docs/api.md)
        "FSD_CHANNELS": ",".join(config.channels),
        # the one model these functions serve: any other in the store is a 404 (docs/api.md)
        "FSD_MODELS": store_model,
        # the coordinator's fan-out; workers refuse invocations that carry a larger one
        "FSD_FANOUT": str(config.fanout),
        **_timeouts(role),
        "healthcheck_interval": f"{HEALTHCHECK_SECONDS}s",
        "FSD_SHUTDOWN_DELAY_SECONDS": str(HEALTHCHECK_SECONDS + SHUTDOWN_AFTER),
        "FSD_DRAIN_SECONDS": _DRAIN[role],
    }
    if role == "worker":
        env["max_inflight"] = str(inflight)
        env["FSD_THREADS"] = str(inflight + EXTRA_THREADS)
    else:  # what one worker invocation may use: the planner's budget (fsd.functions.coordinator)
        env["FSD_MEMORY_MB"] = str(worker_budget_mb(spec, config, inflight=inflight))
    return env


def worker_budget_mb(spec: ModelSpec, config: OperatorConfig, *, inflight: int = 0) -> int:
    """MiB one worker invocation may use: the function's memory shared by the invocations one
    replica admits at once (:func:`worker_inflight`).

    The coordinator plans with it (``FSD_MEMORY_MB``) and refuses every request when it leaves
    a worker no more than it holds before any model (:data:`fsd.planner.BASE_MB`): such a spec
    could never serve, so it is a permanent ``InvalidSpec`` naming the memory that would do,
    never a deployment that answers 503 to everything. ``inflight``: the platform's count
    (default: :func:`worker_inflight` under OpenFaaS CE's cap when it applies).
    """
    inflight = inflight or worker_inflight(spec, config)
    mib = memory_mib(spec.memory)
    budget = mib // inflight
    if budget <= BASE_MB:
        cap = replica_cap(config)
        why = (
            f"{spec.workers} workers on at most {cap} replicas"
            if cap and inflight > config.max_inflight
            else "FSD_MAX_INFLIGHT"
        )
        raise SourceError(
            f"spec.resources.memory {spec.memory} is shared by the {inflight} invocations a "
            f"worker replica admits at once ({why}): {budget} MiB each, no more than the "
            f"{BASE_MB:g} MiB a worker holds before any model; give at least "
            f"{(int(BASE_MB) + 1) * inflight}Mi",
            reason="InvalidSpec",
        )
    return budget


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
    if spec.scale_min == 0 and config.pro:
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
    if config.function_namespace:
        body["namespace"] = config.function_namespace
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
        "apiVersion": "openfaas.com/v1",
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
