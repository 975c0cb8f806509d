"""Why a reconciliation failed, and whether trying again later can help."""

from __future__ import annotations

from fsd.errors import FsdError


class ReconcileError(FsdError):
    """A failure the operator reports as a ``Degraded`` condition with ``reason``.

    ``temporary``: the world may fix it (a service is down): retry later. Otherwise the object
    itself is wrong (a bad source, a missing model) and only a change of its spec can help.
    """

    reason = "ReconcileFailed"

    def __init__(self, message: str, *, temporary: bool, reason: str | None = None) -> None:
        super().__init__(message)
        self.temporary = temporary
        if reason is not None:
            self.reason = reason


class StoreUnreachable(ReconcileError):
    """The S3 endpoint of the model store (or of the source) cannot be reached or refused us."""

    reason = "StoreUnreachable"

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True)


class SourceError(ReconcileError):
    """``spec.source`` names no usable model: a permanent problem of the object."""

    def __init__(self, message: str, reason: str = "InvalidSource") -> None:
        super().__init__(message, temporary=False, reason=reason)


class KubernetesApiError(ReconcileError):
    """The Kubernetes API refused or failed a request (Pro mode's Function resources)."""

    reason = "KubernetesApiError"
