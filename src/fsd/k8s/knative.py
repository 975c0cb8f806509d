"""The Knative Serving platform of the operator: a ``serving.knative.dev/v1`` Service per function.

:data:`KNATIVE` is its entry in :data:`fsd.k8s.platforms.PLATFORMS`. The same image as on
OpenFaaS (of-watchdog in front of the template's entry, listening on 8080) serves both: Knative
sends requests to the container's ``PORT``, which it sets from the one declared
``containerPort`` (8080, also its default: ``pkg/reconciler/revision/resources/deploy.go``,
``getUserPort`` and ``buildUserPortEnv``), and ``PORT`` is reserved to it
(``pkg/apis/serving/k8s_validation.go``, ``reservedEnvVars``). Field names follow Knative
Serving's own definitions (knative/serving, read for this module):

- ``pkg/apis/serving/v1`` (``Service``: ``spec.template`` is a ``RevisionTemplateSpec`` whose
  ``spec`` is a pod spec plus ``containerConcurrency`` and ``timeoutSeconds``;
  ``revision_defaults.go``: ``timeoutSeconds`` defaults to ``revision-timeout-seconds``, 300,
  at most ``max-revision-timeout-seconds``, 600, ``pkg/apis/config/defaults.go``);
- ``pkg/apis/autoscaling/register.go``: the revision template's annotations
  ``autoscaling.knative.dev/min-scale`` (0: scale to zero), ``max-scale``, ``activation-scale``
  (pods woken at once from zero), ``target-burst-capacity`` (-1: the activator always in the
  path, so requests go to pods with a free ``containerConcurrency`` slot);
- ``pkg/queue/sharedmain/handlers.go`` and ``pkg/queue/breaker.go``: each pod's queue-proxy
  admits ``containerConcurrency`` requests, queues ten times as many, answers 503 beyond, and
  cuts a request at ``timeoutSeconds`` with a 504 (``pkg/http/handler/timeout.go``);
- ``pkg/apis/serving/fieldmask.go``: what a revision's pod may hold (secret, projected and
  emptyDir volumes; ``readOnlyRootFilesystem``, ``allowPrivilegeEscalation``, dropped
  capabilities, ``seccompProfile``); a secret volume must be mounted read-only
  (``k8s_validation.go``, ``validateVolumeMounts``);
- ``pkg/apis/serving/v1/service_lifecycle.go``: a Service ``IsReady`` when its ``Ready``
  condition is True and ``status.observedGeneration`` is its ``metadata.generation``;
- the network: ``networking.knative.dev/visibility: cluster-local`` keeps a Service off the
  ingress; its in-cluster address is ``http://<name>.<namespace>.svc.cluster.local``
  (``status.address.url``, the domain template's default, ``pkg/reconciler/route/domains``).

What each function gets, against OpenFaaS's: the same environment (the image is the same:
of-watchdog's timeouts, ``FSD_MAX_TIMEOUT`` under them), with ``FSD_LAUNCHER=knative`` and
``FSD_WORKER_URL`` the worker Service's in-cluster URL; ``timeoutSeconds`` the watchdog's
``read_timeout`` (``exec_timeout`` + 5 s), so the watchdog answers first; the worker's
``containerConcurrency`` its ``max_inflight`` (Knative has no replica cap: ``FSD_MAX_INFLIGHT``
as set); the secrets as read-only files at ``/var/openfaas/secrets`` from Kubernetes Secrets the
operator keeps in the Knative namespace (:class:`fsd.k8s.secrets.KubeSecrets`; not
``fsd-gateway-password``: there is no gateway); the worker is cluster-local, the coordinator
public through the ingress (its ``status.url``).

Where: every Service in one namespace, ``FSD_KNATIVE_NAMESPACE`` (default ``fsd-fn``), as
OpenFaaS keeps its functions in ``openfaas-fn``: the functions' Secrets (the run key, the store's
keys) then live in that one namespace, never in the namespaces of the InferenceModels. Ownership
is the ``fsd.dev/owner-uid`` label, as on OpenFaaS (a Service of another owner is never updated
or deleted: ``FunctionNameTaken``); an InferenceModel in that same namespace also becomes the
Services' ``ownerReference`` (Kubernetes' garbage collector removes them with it), one elsewhere
cannot: a namespaced owner must be in its dependent's namespace, else the collector takes the
reference as absent and deletes the dependent. The finalizer removes them either way.

Updates are JSON merge patches of the whole ``spec`` the operator declares (lists replaced,
fields Knative defaulted kept) when the ``fsd.dev/spec-hash`` annotation says it changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]

from fsd import settings
from fsd.k8s import GROUP, KIND, VERSION
from fsd.k8s.config import OperatorConfig
from fsd.k8s.desired import (
    COORDINATOR_MAX,
    EXEC_SECONDS,
    MANAGED_BY,
    MODEL_LABEL,
    NAMESPACE_LABEL,
    OPERATOR,
    OWNER_LABEL,
    ROLE_LABEL,
    function_environment,
    worker_budget_mb,
    worker_scale,
)
from fsd.k8s.errors import KubernetesApiError
from fsd.k8s.functions import NameTaken, Readiness, kube_client, owned
from fsd.k8s.names import ROLES, function_name, label_value
from fsd.k8s.platforms import Target
from fsd.k8s.secrets import KubeSecrets, read_secrets
from fsd.k8s.spec import ModelSpec
from fsd.settings import Variable
from fsd.variables import SECRETS_DIR

log = logging.getLogger(__name__)

SERVING_GROUP = "serving.knative.dev"
SERVING_VERSION = "v1"
SERVICES = "services"
AUTOSCALING = "autoscaling.knative.dev"
MIN_SCALE = f"{AUTOSCALING}/min-scale"
MAX_SCALE = f"{AUTOSCALING}/max-scale"
ACTIVATION_SCALE = f"{AUTOSCALING}/activation-scale"
BURST_CAPACITY = f"{AUTOSCALING}/target-burst-capacity"
VISIBILITY = "networking.knative.dev/visibility"
SPEC_HASH = "fsd.dev/spec-hash"
NAMESPACE = "fsd-fn"  # FSD_KNATIVE_NAMESPACE's default
PORT = 8080  # of-watchdog's port in the image; Knative's PORT and default user port
SECRETS_MOUNT = SECRETS_DIR  # where the functions read their secret files (their default)
NOT_MOUNTED = frozenset({"fsd-gateway-password"})  # no gateway on Knative
#: the coordinator's requests at once per pod: index.py's 8 threads (its default without a
#: watchdog max_inflight) less the two it keeps for health checks and metrics scrapes
COORDINATOR_CONCURRENCY = 6
_MAX_TEXT = 300


@dataclass(frozen=True)
class KnativeSettings:
    """The operator's Knative settings (``FSD_KNATIVE_NAMESPACE``)."""

    namespace: str = NAMESPACE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KnativeSettings:
        return cls(namespace=settings.text(env, "FSD_KNATIVE_NAMESPACE", NAMESPACE))


def knative_settings(config: OperatorConfig) -> KnativeSettings:
    found = config.platform_options.get("knative")
    return found if isinstance(found, KnativeSettings) else KnativeSettings()


def address(name: str, namespace: str) -> str:
    """A Service's in-cluster URL (``status.address.url``)."""
    return f"http://{name}.{namespace}.svc.cluster.local"


def _inflight(spec: ModelSpec, config: OperatorConfig) -> int:
    """Invocations per worker pod: ``FSD_MAX_INFLIGHT`` as set (Knative caps no replicas)."""
    return config.max_inflight


def _scale(role: str, spec: ModelSpec, inflight: int) -> dict[str, str | None]:
    """The revision template's autoscaling annotations of ``role`` (None: not set, removed)."""
    if role == "coordinator":
        low, high = (0 if spec.scale_min == 0 else 1), COORDINATOR_MAX
        return {MIN_SCALE: str(low), MAX_SCALE: str(high), ACTIVATION_SCALE: None}
    low, high = worker_scale(spec, inflight)
    # every worker of one inference runs at once: woken from zero, as many pods as hold them
    wake = min(math.ceil(spec.workers / inflight), spec.scale_max)
    return {
        MIN_SCALE: "0" if spec.scale_min == 0 else str(low),
        MAX_SCALE: str(high),
        ACTIVATION_SCALE: str(wake) if spec.scale_min == 0 and wake > 1 else None,
        BURST_CAPACITY: "-1",  # the activator balances by free slots: none queue behind a peer
    }


def knative_service(role: str, target: Target, config: OperatorConfig) -> dict[str, Any]:
    """The Knative Service of ``role`` for ``target``."""
    spec = target.spec
    where = knative_settings(config).namespace
    name = function_name(target.name, target.namespace, role)
    worker = function_name(target.name, target.namespace, "worker")
    inflight = _inflight(spec, config)
    env = function_environment(
        role,
        spec,
        config,
        target.model,
        launcher={"FSD_LAUNCHER": "knative", "FSD_WORKER_URL": address(worker, where)},
        inflight=inflight,
    )
    labels = {
        MODEL_LABEL: label_value(target.name),
        NAMESPACE_LABEL: target.namespace,
        ROLE_LABEL: role,
        MANAGED_BY: OPERATOR,
    }
    if target.uid:
        labels[OWNER_LABEL] = label_value(target.uid)
    resources = {"memory": spec.memory, "cpu": spec.cpu}
    image = spec.worker_image if role == "worker" else spec.coordinator_image
    secrets = [s for s in config.secrets if s not in NOT_MOUNTED]
    container = {
        "image": image or (config.worker_image if role == "worker" else config.coordinator_image),
        # Knative resolves a tag to a digest (but for kind.local, ko.local, dev.local: images
        # loaded into kind), so a node's copy is the one asked for
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": PORT}],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "readinessProbe": {"httpGet": {"path": "/_/health"}},  # of-watchdog's health path
        "securityContext": {
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "fsd-secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # the only writable path
        ],
    }
    volumes = [
        {
            "name": "fsd-secrets",
            "projected": {
                "sources": [
                    {"secret": {"name": s, "items": [{"key": s, "path": s}]}} for s in secrets
                ]
            },
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    template_annotations: dict[str, str | None] = {
        **_scale(role, spec, inflight),
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }
    body: dict[str, Any] = {
        "apiVersion": f"{SERVING_GROUP}/{SERVING_VERSION}",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": where,
            "labels": {**labels, VISIBILITY: "cluster-local"} if role == "worker" else labels,
            "annotations": {
                "fsd.dev/inferencemodel": f"{target.namespace}/{target.name}",
                "fsd.dev/store-model": target.model,
            },
        },
        "spec": {
            "template": {
                "metadata": {"labels": dict(labels), "annotations": template_annotations},
                "spec": {
                    "containerConcurrency": inflight
                    if role == "worker"
                    else COORDINATOR_CONCURRENCY,
                    "timeoutSeconds": EXEC_SECONDS[role] + 5,  # the watchdog's read_timeout
                    "containers": [container],
                    "volumes": volumes,
                },
            }
        },
    }
    if target.uid and target.namespace == where:
        body["metadata"]["ownerReferences"] = [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": target.name,
                "uid": target.uid,
                "controller": True,
            }
        ]
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["metadata"]["annotations"][SPEC_HASH] = digest
    return body


def created(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` as it is created: the annotations it leaves unset (None) left out."""
    out = json.loads(json.dumps(body))
    notes = out["spec"]["template"]["metadata"]["annotations"]
    out["spec"]["template"]["metadata"]["annotations"] = {
        k: v for k, v in notes.items() if v is not None
    }
    return dict(out)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return str(value)[:_MAX_TEXT] if isinstance(value, str) else ""


def service_state(found: Mapping[str, Any]) -> tuple[bool | None, str, str]:
    """(ready, reason, message) of a Service as its controller reports it: True when ``Ready``
    is True for its current generation; None while Knative is still at it (no condition, an
    older generation, or Unknown); False when it failed. Read defensively: status is written by
    whoever may patch it."""
    meta, status = _dict(found.get("metadata")), _dict(found.get("status"))
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    listed = status.get("conditions")
    conditions = listed if isinstance(listed, list) else []
    ready = next((c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"), None)
    if ready is None or (generation is not None and observed != generation):
        return None, "", "not reconciled by Knative yet"
    reason, message = _text(ready.get("reason")), _text(ready.get("message"))
    if ready.get("status") == "True":
        return True, "", ""
    return (False if ready.get("status") == "False" else None), reason, message


class KnativeSession:
    """One reconcile's Kubernetes API connection, for the Services and their Secrets."""

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.namespace = knative_settings(config).namespace
        try:
            self._client = kube_client(config)
        except Exception as exc:  # no in-cluster config and no kubeconfig
            raise KubernetesApiError(
                f"Knative needs the Kubernetes API: {exc}", temporary=False
            ) from None
        self._api = kube.CustomObjectsApi(self._client)
        self._errors: tuple[type[Exception], ...] = (
            kube.ApiException,
            urllib3.exceptions.HTTPError,
        )

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False) -> Any:
        try:
            return fn(SERVING_GROUP, SERVING_VERSION, self.namespace, SERVICES, *args)
        except self._errors as exc:
            status = getattr(exc, "status", None)
            if missing_ok and status == 404:
                return None
            temporary = status is None or status in (401, 403, 404, 409, 429) or int(status) >= 500
            reason = getattr(exc, "reason", "") or type(exc).__name__
            raise KubernetesApiError(
                f"Kubernetes API: cannot {what}: {status or ''} {reason}".strip(),
                temporary=temporary,
            ) from None

    def get(self, name: str) -> dict[str, Any] | None:
        found = self._call(
            f"read Knative Service {name}",
            self._api.get_namespaced_custom_object,
            name,
            missing_ok=True,
        )
        return dict(found) if isinstance(found, dict) else None

    def apply(
        self, desired: Sequence[dict[str, Any]], owner_uid: str, memo: MutableMapping[str, Any]
    ) -> None:
        """The Secrets, then each Service: created, or patched when its hash changed."""
        names = [s for s in self.config.secrets if s not in NOT_MOUNTED]
        KubeSecrets(self._client, self.namespace).ensure(
            read_secrets(self.config.secrets_dir, names)
        )
        for body in desired:
            name = body["metadata"]["name"]
            existing = self.get(name)
            if existing is None:
                self._call(
                    f"create Knative Service {name}",
                    self._api.create_namespaced_custom_object,
                    created(body),
                )
                log.info("created Knative Service %s/%s", self.namespace, name)
                continue
            meta = existing.get("metadata") or {}
            if not owned(meta.get("labels"), owner_uid):
                raise NameTaken(name, str((meta.get("labels") or {}).get(OWNER_LABEL, "")))
            if (meta.get("annotations") or {}).get(SPEC_HASH) == body["metadata"]["annotations"][
                SPEC_HASH
            ]:
                continue
            patch = {"metadata": dict(body["metadata"]), "spec": body["spec"]}
            del patch["metadata"]["name"], patch["metadata"]["namespace"]
            self._call(
                f"update Knative Service {name}",
                self._api.patch_namespaced_custom_object,
                name,
                patch,
            )
            log.info("updated Knative Service %s/%s", self.namespace, name)

    def remove(self, names: Sequence[str], owner_uid: str) -> None:
        for name in names:
            existing = self.get(name)
            if existing is None:
                continue
            if not owned((existing.get("metadata") or {}).get("labels"), owner_uid):
                log.warning(
                    "Knative Service %s/%s is not this object's: left", self.namespace, name
                )
                continue
            self._call(
                f"delete Knative Service {name}",
                self._api.delete_namespaced_custom_object,
                name,
                missing_ok=True,
            )
            log.info("deleted Knative Service %s/%s", self.namespace, name)

    def readiness(self, desired: Sequence[dict[str, Any]]) -> Readiness:
        """Ready when every Service's ``Ready`` condition is True for its current generation
        (a Service scaled to zero is: the activator holds requests while a pod starts)."""
        missing: list[str] = []
        waiting: list[str] = []
        failed: list[str] = []
        urls: dict[str, str] = {}
        for body in desired:
            name = body["metadata"]["name"]
            found = self.get(name)
            if found is None:
                missing.append(name)
                continue
            url = _text(_dict(found.get("status")).get("url"))
            if url.startswith(("http://", "https://")):
                urls[name] = url
            ready, reason, message = service_state(found)
            if ready is False:
                failed.append(f"{name}: {reason or 'not ready'}: {message}".rstrip(": "))
            elif ready is None:
                waiting.append(f"{name} ({reason or message or 'in progress'})")
        if missing:
            text, why = f"not deployed yet: {', '.join(missing)}", ""
        elif failed:
            text, why = f"Knative Services not ready: {'; '.join(failed)}", "ServiceNotReady"
        elif waiting:
            text, why = f"waiting for Knative: {', '.join(waiting)}", "WaitingForReplicas"
        else:
            text, why = "every Knative Service is Ready", ""
        ready = not (missing or failed or waiting)
        return Readiness(ready, None, tuple(missing), text, reason=why, urls=urls)


class Knative:
    """The Knative Serving platform (:class:`fsd.k8s.platforms.Platform`)."""

    VARIABLES = (
        Variable(
            "FSD_KNATIVE_NAMESPACE",
            "Knative: where the Services and their Secrets go",
            default=NAMESPACE,
        ),
    )

    def options_from_env(self, env: Mapping[str, str]) -> KnativeSettings:
        return KnativeSettings.from_env(env)

    def check(self, spec: ModelSpec, config: OperatorConfig) -> None:
        worker_budget_mb(spec, config, inflight=_inflight(spec, config))

    def desired(self, target: Target, config: OperatorConfig) -> list[dict[str, Any]]:
        return [knative_service(role, target, config) for role in ROLES]

    def name_of(self, desired: Mapping[str, Any]) -> str:
        return str(desired["metadata"]["name"])

    def coordinator(
        self, config: OperatorConfig, name: str, namespace: str, state: Readiness | None = None
    ) -> dict[str, str]:
        """The coordinator Service and its URL: ``status.url`` once Knative publishes it (the
        ingress' domain), its in-cluster address until then."""
        function = function_name(name, namespace, "coordinator")
        published = (state.urls or {}).get(function) if state is not None else None
        where = knative_settings(config).namespace
        return {"function": function, "url": published or address(function, where)}

    def latency(self, config: OperatorConfig, function: str) -> float | None:
        """Not known: requests reach a Service through Knative's ingress and activator, whose
        metrics name revisions, not functions (none goes through a histogram the operator
        reads)."""
        return None

    @contextmanager
    def session(self, config: OperatorConfig) -> Iterator[KnativeSession]:
        opened = KnativeSession(config)
        try:
            yield opened
        finally:
            opened.close()


KNATIVE = Knative()
