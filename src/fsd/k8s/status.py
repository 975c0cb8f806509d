"""The status block the operator reports: phase, conditions ``Ready`` and ``Degraded``, counters.

Conditions follow the Kubernetes convention (``type``, ``status`` "True"/"False"/"Unknown",
``reason`` in CamelCase, ``message``, ``lastTransitionTime`` kept while the status does not
change, ``observedGeneration``). Phases are the CRD's enum:

================  ==============================================================================
``Pending``       accepted, nothing done yet (a new object, before the first step)
``Partitioning``  the operator is cutting the source and pushing the shards to the store
``Deploying``     functions declared, not all replicas available (or scaled to zero)
``Ready``         every function has its replicas (at least one) available
``Degraded``      a step failed (the ``Degraded`` condition says which and why)
``Deleting``      the object is being deleted: functions and the pushed model go first
================  ==============================================================================

Reasons used:

========================  =====================================================================
``Ready``                 ``Ready`` (True); ``Pending``, ``Partitioning``,
                          ``WaitingForReplicas``, ``FunctionsMissing``, ``ScaledToZero``,
                          ``ServiceNotReady`` (Knative: a Service's ``Ready`` is False, its
                          reason in the message), or the ``Degraded`` reason (False)
``Degraded``              ``AsExpected`` (False); ``GatewayUnreachable``,
                          ``GatewayUnauthorized``, ``StoreUnreachable``, ``KubernetesApiError``,
                          ``SecretMissing``, ``SecretRejected``, ``SecretNotManaged``,
                          ``FunctionNameTaken``, ``FunctionLimit``, ``ImageNotPublic``,
                          ``InternalError`` (temporary: retried with backoff);
                          ``InvalidSpec``, ``ImageNotAllowed``, ``InvalidSource``,
                          ``SourceNotFound``, ``SourceTooLarge``, ``ModelNotFound``,
                          ``PartitionMissing``, ``ModelNameConflict``, ``GatewayRejected``
                          (permanent: fixed by changing the spec)
========================  =====================================================================

``coordinator: {function, url}`` names the coordinator function and where it is invoked;
``platform`` the platform its functions were deployed to (``spec.platform`` or the operator's
default), so a model moved to another one has its old functions removed.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"
DEGRADED = "Degraded"


def now() -> str:
    stamp = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
    return stamp.isoformat().replace("+00:00", "Z")


def condition(
    previous: Sequence[Mapping[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    at: str | None = None,
) -> dict[str, Any]:
    """One condition; ``lastTransitionTime`` stays as it was unless ``status`` flips."""
    value = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), None)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    out: dict[str, Any] = {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": since or at or now(),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def report(
    previous: Mapping[str, Any],
    *,
    phase: str,
    ready: bool,
    ready_reason: str,
    degraded: bool,
    degraded_reason: str,
    message: str,
    generation: int | None,
    ready_workers: int | None = None,
    model: str | None = None,
    coordinator: Mapping[str, str] | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    """The status fields to patch, given the previous status (for transition times)."""
    old = previous.get("conditions") or []
    at = now()
    ok = "the model is served" if ready else message
    fields: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            condition(old, READY, ready, ready_reason, ok, generation, at),
            condition(
                old,
                DEGRADED,
                degraded,
                degraded_reason,
                message if degraded else "",
                generation,
                at,
            ),
        ],
    }
    if generation is not None:
        fields["observedGeneration"] = generation
    if ready_workers is not None:
        fields["readyWorkers"] = ready_workers
    if model is not None:
        fields["modelName"] = model
    if coordinator is not None:
        fields["coordinator"] = dict(coordinator)
    if platform is not None:
        fields["platform"] = platform
    return fields


def progress(
    previous: Mapping[str, Any], phase: str, message: str, generation: int | None
) -> dict[str, Any]:
    """A step under way (Pending, Partitioning, Deleting): not ready, not degraded."""
    return report(
        previous,
        phase=phase,
        ready=False,
        ready_reason=phase,
        degraded=False,
        degraded_reason="AsExpected",
        message=message,
        generation=generation,
    )


def failed(
    previous: Mapping[str, Any], reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """Degraded: the reconciliation failed for ``reason``."""
    return report(
        previous,
        phase="Degraded",
        ready=False,
        ready_reason=reason,
        degraded=True,
        degraded_reason=reason,
        message=message,
        generation=generation,
    )


def changed(previous: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether patching ``fields`` would change anything but transition times."""

    def strip(conditions: Any) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []]

    for key, value in fields.items():
        if key == "conditions":
            if strip(previous.get(key)) != strip(value):
                return True
        elif previous.get(key) != value:
            return True
    return False
