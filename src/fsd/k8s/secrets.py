"""The functions' secrets, created and kept by the operator from its own mounted files.

The chart mounts the credentials Secret into the operator pod (``FSD_SECRETS_DIR``, one file per
secret name: contract 4); the functions mount the same names in their namespace. The operator
copies one to the other (:func:`read_secrets`, then the platform's session writes them), so
nobody runs ``faas-cli secret create`` or ``kubectl create secret``:

- :class:`KubeSecrets`: Kubernetes Secrets in the function namespace, key = the secret's name as
  ``faas-cli secret create`` makes them (faas-netes ``pkg/k8s/secrets.go``,
  ``getValidSecretData``), labelled ``app.kubernetes.io/managed-by: fsd-operator``; values are
  compared and replaced when rotated. A Secret of that name the operator did not create is left
  alone (``SecretNotManaged``). A platform with its own secrets API writes them its way (the
  OpenFaaS gateway's ``/system/secrets``: :mod:`fsd.k8s.openfaas`).

Every failure is a *temporary* :class:`ReconcileError` naming the secret (``SecretMissing``: no
file; ``SecretRejected``: refused), so the model is Degraded and retried with backoff until the
file appears or the platform accepts it. Values never reach a log or a message.

No lock is held across these calls (a slow API would stall every other object's reconcile
behind it): two reconciles writing the same name at once meet as a 409 and the later one leaves
what the earlier wrote (both copy the same mounted file).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as kube  # type: ignore[import-untyped,unused-ignore]

from fsd.k8s.errors import ReconcileError

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fsd-operator"
_MAX_BYTES = 64 * 1024


class SecretError(ReconcileError):
    """A function secret could not be made: always temporary (the world can fix it)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, temporary=True, reason=reason)


def read_secrets(folder: str, names: Sequence[str]) -> dict[str, str]:
    """The value of each secret ``name`` from ``folder/<name>``; raises ``SecretMissing``."""
    values: dict[str, str] = {}
    for name in names:
        path = Path(folder) / name
        try:
            if path.stat().st_size > _MAX_BYTES:
                raise SecretError(f"secret {name}: {path} is over 64 KiB", "SecretRejected")
            value = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else type(exc).__name__
            raise SecretError(
                f"secret {name}: cannot read {path} ({why}); the chart mounts it from the "
                "credentials Secret",
                "SecretMissing",
            ) from None
        if not value.strip():
            raise SecretError(f"secret {name}: {path} is empty", "SecretMissing")
        values[name] = value
    return values


class KubeSecrets:
    """Pro: Kubernetes Secrets in ``namespace`` with the official client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        self._api = kube.CoreV1Api(api_client)
        self.namespace = namespace

    def _fail(self, name: str, what: str, exc: Exception) -> SecretError:
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", "") or type(exc).__name__
        return SecretError(
            f"secret {name}: cannot {what} it in {self.namespace}: {status or ''} {reason}",
            "SecretRejected",
        )

    def ensure(self, values: Mapping[str, str]) -> None:
        errors = (kube.ApiException, urllib3.exceptions.HTTPError)
        for name, value in values.items():
            encoded = base64.b64encode(value.encode()).decode()
            try:
                found = self._api.read_namespaced_secret(name, self.namespace)
            except errors as exc:
                if getattr(exc, "status", None) != 404:
                    raise self._fail(name, "read", exc) from None
                found = None
            if found is None:
                body = kube.V1Secret(
                    api_version="v1",
                    kind="Secret",
                    type="Opaque",
                    metadata=kube.V1ObjectMeta(
                        name=name, namespace=self.namespace, labels={MANAGED_BY: OPERATOR}
                    ),
                    data={name: encoded},
                )
                try:
                    self._api.create_namespaced_secret(self.namespace, body)
                except errors as exc:
                    if getattr(exc, "status", None) == 409:
                        continue  # created meanwhile by another reconcile, from the same file
                    raise self._fail(name, "create", exc) from None
                log.info("created Secret %s/%s", self.namespace, name)
                continue
            meta = _field(found, "metadata") or {}
            labels = _field(meta, "labels") or {}
            if labels.get(MANAGED_BY) != OPERATOR:
                raise SecretError(
                    f"secret {name}: a Secret of that name in {self.namespace} is not managed by "
                    f"{OPERATOR}; delete it and the operator creates its own",
                    "SecretNotManaged",
                )
            data = _field(found, "data") or {}
            if data.get(name) == encoded and len(data) == 1:
                continue
            try:
                self._api.patch_namespaced_secret(
                    name, self.namespace, {"data": {**dict.fromkeys(data), name: encoded}}
                )
            except errors as exc:
                raise self._fail(name, "update", exc) from None
            log.info("updated Secret %s/%s", self.namespace, name)


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` of a dict, or the attribute of a kubernetes client model."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)
