"""kopf handlers for ``InferenceModel`` (``fsd.dev/v1alpha1``, plural ``inferencemodels``).

- create / update of ``spec`` / resume (operator restart): :func:`reconcile`: (1) the model in the
  store (:mod:`fsd.k8s.models`), (2) both functions deployed (POST, or PUT when they exist; or
  ``Function`` resources in Pro mode), (3) status: phase, ``Ready``/``Degraded``,
  ``readyWorkers``, ``observedGeneration``, ``modelName``. Every step is idempotent.
- a temporary failure (gateway, S3 or the Kubernetes API unreachable) reports ``Degraded=True``
  with its reason and raises ``kopf.TemporaryError`` (kopf retries, backing off); a permanent one
  (a bad spec or source) reports it and raises ``kopf.PermanentError`` (the next spec change
  retries). Nothing escapes as a crash.
- delete (kopf's finalizer): :func:`cleanup` removes both functions and the model the operator
  pushed for this object (404s are fine), then kopf releases the object.
- a timer (:func:`refresh`, every ``FSD_OPERATOR_REFRESH_SECONDS``): re-reads readiness from the
  gateway, redeploys a function that disappeared, and patches the status only when it changed.
  It acts only after a successful reconcile of the current generation (kept in the object's memo).

Nothing is registered on import: :func:`register` puts the handlers into a registry
(operator/main.py and ``python -m fsd.k8s`` use kopf's default one; tests their own).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import kopf

from fsd.errors import InputError
from fsd.k8s import GROUP, PLURAL, VERSION
from fsd.k8s import status as report
from fsd.k8s.config import OperatorConfig, refresh_seconds
from fsd.k8s.desired import function_deployments
from fsd.k8s.errors import ReconcileError
from fsd.k8s.functions import Readiness, deployer, readiness
from fsd.k8s.latency import coordinator_totals, recent_latency
from fsd.k8s.models import ModelKeeper, Owner
from fsd.k8s.names import ROLES, function_name, store_name
from fsd.k8s.openfaas import GatewayClient, GatewayError
from fsd.k8s.spec import ModelSpec, parse_spec

log = logging.getLogger(__name__)

FINALIZER = "fsd.dev/finalizer"
_DEPLOYED = "fsd_deployed_generation"  # per-object memo: the generation last reconciled
_TOTALS = "fsd_latency_totals"  # per-object memo: the coordinator's request totals last seen
_MAX_DELAY = 300.0
_TIMER_POLLING = 2.0


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Startup: our finalizer, progress kept in annotations, the config (unless given)."""
    settings.persistence.finalizer = FINALIZER
    # annotations, not status.kopf: the CRD's status schema would prune kopf's own fields
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fsd.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="fsd.dev")
    if not isinstance(memo.get("config"), OperatorConfig):
        memo["config"] = OperatorConfig.from_env()
    config: OperatorConfig = memo["config"]
    # a deleted object waits for its timer to stop: give the timer a moment to exit at once,
    # and if it is busy (a sync call in a thread) look again soon, not in kopf's default 60 s
    settings.background.instant_exit_timeout = 0.1
    polling = min(_TIMER_POLLING, config.refresh_seconds or _TIMER_POLLING)
    settings.background.cancellation_polling = polling
    log.info(
        "fsd operator: %s mode, gateway %s, store %s",
        config.mode,
        config.gateway_url,
        config.store.address,
    )


def _config(memo: Any) -> OperatorConfig:
    config = memo.get("config") if hasattr(memo, "get") else None
    if not isinstance(config, OperatorConfig):
        raise kopf.PermanentError("the operator has no configuration (startup did not run)")
    return config


def _gateway(config: OperatorConfig) -> GatewayClient:
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


def _generation(meta: Any) -> int | None:
    value = meta.get("generation")
    return int(value) if value is not None else None


def _retry_delay(config: OperatorConfig, retry: int) -> float:
    """Back off: the configured delay, doubling per retry, at most 5 minutes."""
    return min(config.retry_seconds * 2.0 ** min(retry, 6), max(config.retry_seconds, _MAX_DELAY))


def _fail(
    patch: kopf.Patch,
    status: Any,
    exc: ReconcileError,
    generation: int | None,
    config: OperatorConfig,
    retry: int,
    phase: str = "Degraded",
) -> NoReturn:
    """Report ``exc`` as Degraded and hand it to kopf as a temporary or permanent error."""
    fields = report.failed(status, exc.reason, str(exc), generation)
    fields["phase"] = phase
    patch.status.update(fields)
    if exc.temporary:
        raise kopf.TemporaryError(f"{exc.reason}: {exc}", delay=_retry_delay(config, retry))
    raise kopf.PermanentError(f"{exc.reason}: {exc}")


def _ready_fields(
    status: Any, state: Readiness, generation: int | None, model: str | None
) -> dict[str, Any]:
    if state.ready:
        reason = "Ready"
    elif state.missing:
        reason = "FunctionsMissing"
    else:
        reason = "WaitingForReplicas"
    return report.report(
        status,
        phase="Ready" if state.ready else "Deploying",
        ready=state.ready,
        ready_reason=reason,
        degraded=False,
        degraded_reason="AsExpected",
        message=state.message,
        generation=generation,
        ready_workers=state.ready_workers,
        model=model,
    )


def _deployments(
    config: OperatorConfig, spec: ModelSpec, name: str, namespace: str, model: str
) -> list[dict[str, Any]]:
    return function_deployments(
        name=name, namespace=namespace, spec=spec, config=config, store_model=model
    )


def _apply(
    config: OperatorConfig, gateway: GatewayClient, deployments: list[dict[str, Any]]
) -> None:
    chosen, api_client = deployer(config, gateway)
    try:
        chosen.apply(deployments)
    finally:
        if api_client is not None:
            api_client.close()


def reconcile(
    *,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str | None,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    retry: int,
    logger: Any,
    **_: Any,
) -> None:
    """Create, update, resume: model in the store, functions deployed, status reported."""
    config = _config(memo)
    generation = _generation(meta)
    memo.pop(_DEPLOYED, None)  # the timer stands aside until this succeeds
    name, namespace = str(name), str(namespace or "default")
    try:
        parsed = parse_spec(spec)
        model = parsed.source.model or store_name(name)
        keeper = ModelKeeper(config.store, max_source_bytes=config.max_source_bytes)
        ensured = keeper.ensure(parsed, Owner(namespace, name, parsed.source.url), model)
        if ensured.pushed:
            logger.info(f"pushed model {model} for {parsed.workers} workers")
        deployments = _deployments(config, parsed, name, namespace, ensured.model)
        with _gateway(config) as gateway:
            _apply(config, gateway, deployments)
            state = readiness(gateway, deployments)
    except ReconcileError as exc:
        _fail(patch, status, exc, generation, config, retry)
    except Exception as exc:  # a bug: reported and retried, never a crash
        logger.exception("reconcile failed unexpectedly")
        internal = ReconcileError(
            f"{type(exc).__name__}: {exc}", temporary=True, reason="InternalError"
        )
        _fail(patch, status, internal, generation, config, retry)
    patch.status.update(_ready_fields(status, state, generation, ensured.model))
    memo[_DEPLOYED] = generation
    logger.info(f"reconciled: {state.message}")


def cleanup(
    *,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str | None,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    retry: int,
    logger: Any,
    **_: Any,
) -> None:
    """Delete: both functions, then the model this object's source pushed (if it did)."""
    config = _config(memo)
    memo.pop(_DEPLOYED, None)
    name, namespace = str(name), str(namespace or "default")
    generation = _generation(meta)
    try:
        with _gateway(config) as gateway:
            chosen, api_client = deployer(config, gateway)
            try:
                chosen.remove([function_name(name, role) for role in ROLES])
            finally:
                if api_client is not None:
                    api_client.close()
        keeper = ModelKeeper(config.store, max_source_bytes=config.max_source_bytes)
        removed = keeper.delete(store_name(name), Owner(namespace, name))
    except ReconcileError as exc:
        _fail(patch, status, exc, generation, config, retry, phase="Deleting")
    logger.info(f"deleted the functions and {removed} objects of the model")


def refresh(
    *,
    spec: kopf.Spec,
    meta: kopf.Meta,
    status: kopf.Status,
    name: str | None,
    namespace: str | None,
    patch: kopf.Patch,
    memo: Any,
    logger: Any,
    **_: Any,
) -> None:
    """Timer: readiness from the gateway; a vanished function is deployed again."""
    generation = _generation(meta)
    if _DEPLOYED not in memo or memo[_DEPLOYED] != generation or meta.get("deletionTimestamp"):
        return
    config = _config(memo)
    name, namespace = str(name), str(namespace or "default")
    try:
        parsed = parse_spec(spec)
        model = parsed.source.model or store_name(name)
        deployments = _deployments(config, parsed, name, namespace, model)
        with _gateway(config) as gateway:
            state = readiness(gateway, deployments)
            if state.missing:
                # CE: deleted behind our back. Pro: maybe not reconciled by OpenFaaS yet; either
                # way, make sure they are (re)declared: applying is idempotent
                if not config.pro:
                    logger.warning(f"functions vanished, deploying them again: {state.message}")
                _apply(config, gateway, [d for d in deployments if d["service"] in state.missing])
                state = readiness(gateway, deployments)
            fields = _ready_fields(status, state, generation, model)
            if state.ready:
                latency = _latency(gateway, memo, function_name(name, "coordinator"), namespace)
                if latency is not None:
                    fields["lastLatencySeconds"] = round(latency, 6)
    except ReconcileError as exc:
        fields = report.failed(status, exc.reason, str(exc), generation)
    if report.changed(status, fields):
        patch.status.update(fields)


def _latency(gateway: GatewayClient, memo: Any, coordinator: str, namespace: str) -> float | None:
    """Mean latency of the inferences since the timer last looked (see fsd.k8s.latency)."""
    try:
        exposition = gateway.metrics(coordinator)
    except ReconcileError:
        return None  # metrics are a nicety: never degrade a model over them
    now = coordinator_totals(exposition) if exposition else None
    if now is None:
        return None
    seen = memo.setdefault(_TOTALS, {})
    key = (namespace, coordinator)
    latency = recent_latency(now, seen.get(key))
    seen[key] = now
    return latency


def register(
    registry: kopf.OperatorRegistry | None = None, *, refresh_every: float | None = None
) -> kopf.OperatorRegistry:
    """Put the handlers into ``registry`` (kopf's default one if None) and return it."""
    registry = registry if registry is not None else kopf.get_default_registry()
    every = refresh_seconds() if refresh_every is None else refresh_every
    kopf.on.startup(registry=registry)(configure)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")(reconcile)
    kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="reconcile", field="spec")(
        reconcile
    )
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="reconcile")(reconcile)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, id="cleanup")(cleanup)
    if every > 0:
        kopf.timer(
            GROUP, VERSION, PLURAL, registry=registry, id="refresh", interval=every, idle=None
        )(refresh)
    return registry
