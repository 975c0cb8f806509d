"""kopf handlers for ``InferenceModel`` (``fsd.dev/v1alpha1``, plural ``inferencemodels``).

- create / update of ``spec`` / resume (operator restart): :func:`reconcile`: (0) phase
  ``Pending`` on a new object, the spec checked (``spec.image`` against ``FSD_ALLOWED_IMAGES``:
  an image elsewhere is a permanent ``ImageNotAllowed`` and nothing is deployed, so no secret is
  ever mounted into an arbitrary image), (1) the model in the store (:mod:`fsd.k8s.models`;
  phase ``Partitioning`` while shards are pushed), (2) the function secrets created or updated
  from the operator's mounted files (:mod:`fsd.k8s.secrets`), (3) both functions deployed on the
  object's platform (``spec.platform``, else ``FSD_PLATFORM``; :mod:`fsd.k8s.platforms`: OpenFaaS
  POST or PUT of the functions this object owns, or ``Function`` resources in Pro mode; Knative
  ``Service`` resources), (4) status: phase, ``Ready``/``Degraded``, ``readyWorkers``,
  ``observedGeneration``, ``modelName``, ``platform``, ``coordinator: {function, url}``. Every
  step is idempotent. A model moved to another platform (``status.platform`` differs) has its
  functions on the old one removed once the new ones are applied (best effort).
- a temporary failure (gateway, S3 or the Kubernetes API unreachable, a secret missing or
  refused, a function name taken by another owner) reports ``Degraded=True`` with its reason and
  raises ``kopf.TemporaryError`` (kopf retries, backing off); a permanent one (a bad spec or
  source) reports it and raises ``kopf.PermanentError`` (the next spec change retries). Nothing
  escapes as a crash.
- delete (kopf's finalizer): :func:`cleanup` reports ``Deleting``, removes both functions (only
  those this object owns, on its platform and on ``status.platform``'s) and the model the
  operator pushed for it, then kopf releases it.
- a timer (:func:`refresh`, every ``FSD_OPERATOR_REFRESH_SECONDS``): keeps the secrets current
  (rotated files are copied again), re-reads readiness from the platform, redeploys a function
  that disappeared, asks its platform for ``lastLatencySeconds`` (Prometheus), and
  patches the status only when it changed. It acts only after a successful reconcile of the
  current generation (kept in the object's memo).

The in-between phases (Pending, Partitioning, Deleting) are written at once with the official
client (kopf patches only when a handler returns); a failure to write one is logged, not fatal.

Nothing is registered on import: :func:`register` puts the handlers into a registry
(operator/main.py and ``python -m fsd.k8s`` use kopf's default one; tests their own).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import kopf
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]

from fsd.k8s import GROUP, PLURAL, VERSION, platforms
from fsd.k8s import status as report
from fsd.k8s.config import OperatorConfig, image_allowed, refresh_seconds
from fsd.k8s.errors import ReconcileError, SourceError
from fsd.k8s.functions import Readiness, kube_client
from fsd.k8s.models import ModelKeeper, Owner
from fsd.k8s.names import ROLES, function_name, store_name
from fsd.k8s.platforms import Target
from fsd.k8s.spec import ModelSpec, parse_spec

log = logging.getLogger(__name__)

FINALIZER = "fsd.dev/finalizer"
_DEPLOYED = "fsd_deployed_generation"  # per-object memo: the generation last reconciled
_SHARED = "fsd_platform_state"  # global memo: what the platforms keep across objects
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
    memo.setdefault(_SHARED, {})  # shared by every object's (shallow-copied) memo
    config: OperatorConfig = memo["config"]
    # a deleted object waits for its timer to stop: give the timer a moment to exit at once,
    # and if it is busy (a sync call in a thread) look again soon, not in kopf's default 60 s
    settings.background.instant_exit_timeout = 0.1
    polling = min(_TIMER_POLLING, config.refresh_seconds or _TIMER_POLLING)
    settings.background.cancellation_polling = polling
    log.info(
        "fsd operator: platform %s by default, store %s", config.platform, config.store.endpoint
    )


def _config(memo: Any) -> OperatorConfig:
    config = memo.get("config") if hasattr(memo, "get") else None
    if not isinstance(config, OperatorConfig):
        raise kopf.PermanentError("the operator has no configuration (startup did not run)")
    return config


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
    status: Any,
    state: Readiness,
    generation: int | None,
    model: str | None,
    coordinator: dict[str, str] | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    return report.report(
        status,
        phase="Ready" if state.ready else "Deploying",
        ready=state.ready,
        ready_reason=state.ready_reason,
        degraded=False,
        degraded_reason="AsExpected",
        message=state.message,
        generation=generation,
        ready_workers=state.ready_workers,
        model=model,
        coordinator=coordinator,
        platform=platform,
    )


def _platform(config: OperatorConfig, spec: ModelSpec) -> tuple[str, platforms.Platform]:
    """The object's platform: ``spec.platform``, else the operator's ``FSD_PLATFORM``."""
    name = spec.platform or config.platform
    return name, platforms.get(name)


def _check_images(config: OperatorConfig, spec: ModelSpec) -> None:
    """``spec.image`` must be under ``FSD_ALLOWED_IMAGES``: a permanent spec error otherwise."""
    prefixes = config.image_prefixes
    for field, image in (("coordinator", spec.coordinator_image), ("worker", spec.worker_image)):
        if image and not image_allowed(image, prefixes):
            raise SourceError(
                f"spec.image.{field} {image!r} is not under FSD_ALLOWED_IMAGES "
                f"({', '.join(prefixes)}): nothing deployed",
                reason="ImageNotAllowed",
            )


def _check_channel(config: OperatorConfig, spec: ModelSpec) -> None:
    """``spec.channel`` must be one the functions may use (``FSD_CHANNELS``)."""
    if spec.channel not in config.channels:
        raise SourceError(
            f"spec.channel {spec.channel!r} is not a transport this operator's functions run "
            f"(FSD_CHANNELS: {', '.join(config.channels)})",
            reason="InvalidSpec",
        )


def _keeper(config: OperatorConfig) -> ModelKeeper:
    return ModelKeeper(config.store, max_source_bytes=config.max_source_bytes, shared=config.shared)


def _remove_functions(
    config: OperatorConfig, platform: str, name: str, namespace: str, uid: str
) -> None:
    """Remove the object's two functions on ``platform`` (only those it owns)."""
    with platforms.get(platform).session(config) as session:
        session.remove([function_name(name, namespace, role) for role in ROLES], uid)


def _withdraw(
    config: OperatorConfig, names: Any, name: str, namespace: str, uid: str, logger: Any
) -> None:
    """Remove this object's functions on the platforms ``names``: they must not go on serving a
    model the namespace may no longer reach, nor from a platform it left. Best effort: the
    failure is reported all the same."""
    for platform in sorted({n for n in names if isinstance(n, str) and n in platforms.PLATFORMS}):
        try:
            _remove_functions(config, platform, name, namespace, uid)
        except ReconcileError as exc:
            logger.warning(
                f"could not remove the {platform} functions of {namespace}/{name}: {exc}"
            )


def _shared(memo: Any) -> dict[str, Any]:
    """What the platforms keep across objects (e.g. the digests of the secrets written)."""
    shared = memo.get(_SHARED) if hasattr(memo, "get") else None
    if not isinstance(shared, dict):
        shared = {}
        memo[_SHARED] = shared
    return shared


def _set_phase(
    config: OperatorConfig, namespace: str, name: str, fields: dict[str, Any], logger: Any
) -> None:
    """Write an in-between phase now (kopf patches only when the handler returns)."""
    try:
        api_client = kube_client(config)
    except Exception as exc:  # no API config: the phase is informative only
        logger.warning(f"cannot report phase {fields.get('phase')}: {exc}")
        return
    try:
        kube.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": fields}
        )
    except Exception as exc:
        logger.warning(f"cannot report phase {fields.get('phase')}: {type(exc).__name__}")
    finally:
        api_client.close()


def _uid(meta: Any) -> str:
    return str(meta.get("uid") or "")


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
    uid = _uid(meta)
    if not status.get("phase"):
        fields = report.progress(status, "Pending", "accepted; nothing done yet", generation)
        _set_phase(config, namespace, name, fields, logger)

    def partitioning() -> None:
        message = "partitioning the source and pushing the shards to the store"
        _set_phase(
            config,
            namespace,
            name,
            report.progress(status, "Partitioning", message, generation),
            logger,
        )

    chosen = ""
    try:
        parsed = parse_spec(spec)
        chosen, platform = _platform(config, parsed)
        _check_images(config, parsed)
        _check_channel(config, parsed)
        platform.check(parsed, config)  # a spec that could never serve: before any push
        model = parsed.source.model or store_name(name, namespace)
        keeper = _keeper(config)
        owner = Owner(namespace, name, parsed.source.url)
        ensured = keeper.ensure(parsed, owner, model, on_push=partitioning)
        if ensured.pushed:
            logger.info(f"pushed model {model} for {parsed.workers} workers")
        desired = platform.desired(Target(name, namespace, parsed, ensured.model, uid), config)
        with platform.session(config) as session:
            session.apply(desired, uid, _shared(memo))
            state = session.readiness(desired)
        coordinator = platform.coordinator(config, name, namespace, state)
    except ReconcileError as exc:
        if exc.reason == "ModelNotAllowed":  # e.g. a share withdrawn: stop serving it
            _withdraw(config, {chosen, status.get("platform")}, name, namespace, uid, logger)
        _fail(patch, status, exc, generation, config, retry)
    except Exception as exc:  # a bug: reported and retried, never a crash
        logger.exception("reconcile failed unexpectedly")
        internal = ReconcileError(
            f"{type(exc).__name__}: {exc}", temporary=True, reason="InternalError"
        )
        _fail(patch, status, internal, generation, config, retry)
    moved_from = status.get("platform")
    if moved_from and moved_from != chosen:  # the functions left on the old platform go
        _withdraw(config, {moved_from}, name, namespace, uid, logger)
    fields = _ready_fields(status, state, generation, ensured.model, coordinator, chosen)
    patch.status.update(fields)
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
    if status.get("phase") != "Deleting":
        message = "removing the functions and the model pushed for this object"
        fields = report.progress(status, "Deleting", message, generation)
        _set_phase(config, namespace, name, fields, logger)
    try:
        # its platform, and the one status says it was deployed to (a move not finished)
        wanted = spec.get("platform") if hasattr(spec, "get") else None
        chosen = {wanted or config.platform, status.get("platform")}
        for platform in sorted({p for p in chosen if isinstance(p, str) and p}):
            if platform in platforms.PLATFORMS:
                _remove_functions(config, platform, name, namespace, _uid(meta))
        keeper = _keeper(config)
        removed = keeper.delete(store_name(name, namespace), Owner(namespace, name))
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
    """Timer: readiness from the platform; a vanished function is deployed again."""
    generation = _generation(meta)
    if _DEPLOYED not in memo or memo[_DEPLOYED] != generation or meta.get("deletionTimestamp"):
        return
    config = _config(memo)
    name, namespace = str(name), str(namespace or "default")
    uid = _uid(meta)
    try:
        parsed = parse_spec(spec)
        chosen, platform = _platform(config, parsed)
        # from the spec, as reconcile derives it: status is the object's, patchable by others
        model = parsed.source.model or store_name(name, namespace)
        desired = platform.desired(Target(name, namespace, parsed, model, uid), config)
        with platform.session(config) as session:
            state = session.readiness(desired)
            # the secrets are kept current (a rotated file is copied again); vanished functions
            # (deleted behind our back, or not reconciled by the platform yet) are declared
            # again: applying is idempotent
            if state.missing:
                logger.info(f"functions missing, declaring them again: {state.message}")
            missing = [d for d in desired if platform.name_of(d) in state.missing]
            session.apply(missing, uid, _shared(memo))
            if missing:
                state = session.readiness(desired)
            coordinator = platform.coordinator(config, name, namespace, state)
            fields = _ready_fields(status, state, generation, model, coordinator, chosen)
            if state.ready:
                seconds = _latency(config, platform, coordinator["function"])
                if seconds is not None:
                    fields["lastLatencySeconds"] = round(seconds, 6)
    except ReconcileError as exc:
        fields = report.failed(status, exc.reason, str(exc), generation)
    if report.changed(status, fields):
        patch.status.update(fields)


def _latency(
    config: OperatorConfig, platform: platforms.Platform, coordinator: str
) -> float | None:
    """Mean request seconds of the coordinator from its platform (contract 8); None: unknown.

    The platform's reading never raises (and its own setting may turn it off), so a missing
    Prometheus never degrades a model.
    """
    return platform.latency(config, coordinator)


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
