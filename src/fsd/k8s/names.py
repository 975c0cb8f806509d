"""Names derived from an InferenceModel: its two functions, label values, its model in the store.

One rule for the functions (contract 1): ``<name>-<namespace>-<role>``, so ``a/gc1024`` and
``b/gc1024`` get functions of their own (``gc1024-a-coordinator``, ``gc1024-b-coordinator``), and
the example ``gc1024`` in ``default`` deploys ``gc1024-default-coordinator`` and
``gc1024-default-worker``.

Kubernetes object names may be DNS-1123 *subdomains* (253 characters, dots allowed); OpenFaaS
function names become Deployment and Service names, which must be DNS-1123 *labels* (63
characters, ``[a-z0-9-]``), and label values are limited to 63 characters. A name too long is cut
and given a hash of the full name, so two long names never collide; so is a name that cleaning
changed (``gc.1024`` becomes ``gc-1024-default-<hash>-worker``, never ``gc-1024``'s own name).
"""

from __future__ import annotations

import hashlib
import re

#: The suffixes of the two functions: ``<name>-<namespace>-coordinator`` and ``...-worker``.
ROLES = ("coordinator", "worker")
DNS_LABEL = 63
STORE_NAME = 64  # fsd.store's limit on model names
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _fit(base: str, limit: int, full: str, *, hashed: bool = False) -> str:
    """``base`` if it fits in ``limit`` and is not to be ``hashed``, else its head and a hash of
    ``full``."""
    if len(base) <= limit and not hashed:
        return base
    head = base[: limit - 9].rstrip("-._")
    return f"{head}-{_digest(full)}"


def function_name(name: str, namespace: str, role: str) -> str:
    """``<name>-<namespace>-<role>`` as a DNS-1123 label (63 characters at most).

    A name too long, or one that cleaning changed (an InferenceModel name may have dots: ``gc.1024``
    and ``gc-1024`` must not share functions), keeps its head and gets a hash of
    ``namespace/name``: two InferenceModels seldom share a function name (``a-b``/``c`` and
    ``a``/``b-c`` do: the owner label keeps them apart, :mod:`fsd.k8s.functions`, and the second
    reports ``FunctionNameTaken``).
    """
    if role not in ROLES:
        raise ValueError(f"unknown function role {role!r}")
    raw = f"{name}-{namespace}"
    base = _NOT_LABEL.sub("-", raw.lower()).strip("-") or "model"
    limit = DNS_LABEL - len(role) - 1
    return f"{_fit(base, limit, f'{namespace}/{name}', hashed=base != raw)}-{role}"


def label_value(text: str) -> str:
    """``text`` as a label value: 63 characters, ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return _fit(value, DNS_LABEL, text)


def store_name(name: str, namespace: str) -> str:
    """The model's name in the store: ``<namespace>.<name>`` (64 characters of ``[A-Za-z0-9._-]``).

    The namespace keeps ``a/gc1024`` and ``b/gc1024`` apart in the one store they share; a
    namespace has no dot, so the name is unambiguous. The functions serve only this model, so a
    request may leave ``model`` out (docs/api.md).
    """
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{namespace}.{name}").lstrip(".") or "model"
    return _fit(value, STORE_NAME, f"{namespace}/{name}")
