"""Which models a namespace may serve: the one rule of tenant isolation in the operator.

The model store is shared by every namespace, and an InferenceModel's ``spec.source.model`` is
free text: without this rule, ``source.model: team-b.secret-model`` in ``team-a`` got a
coordinator serving ``team-b``'s model. A namespace reaches a stored model only when

1. the operator pushed it for an InferenceModel **of that namespace** (``spec.source.url``: the
   store's owner marker, written by the operator alone, names the namespace), or
2. an admin **shared** it with that namespace in the operator's own configuration
   (``FSD_SHARED_MODELS``, the chart's ``operator.sharedModels``): ``<namespace>/<model>``,
   ``*`` for every namespace, a model ending in ``*`` for a prefix.

Nothing in an InferenceModel can widen it. The check comes before the manifest is read and
says the same whether the model exists or not, so a namespace cannot probe another's names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fsd.errors import InputError
from fsd.k8s.spec import MODEL_NAME

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label


@dataclass(frozen=True)
class Grant:
    """One shared model (or prefix) and the namespace (or ``*``) it is shared with."""

    namespace: str
    model: str

    def covers(self, namespace: str, model: str) -> bool:
        if self.namespace not in ("*", namespace):
            return False
        if self.model.endswith("*"):
            return model.startswith(self.model[:-1])
        return model == self.model


@dataclass(frozen=True)
class ModelAccess:
    """The grants an admin configured (``FSD_SHARED_MODELS``); none by default."""

    grants: tuple[Grant, ...] = ()

    @classmethod
    def parse(cls, text: str) -> ModelAccess:
        """``ns/model,*/prefix*,...``; :class:`InputError` naming the entry that is neither."""
        grants = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            namespace, slash, model = item.partition("/")
            prefix = model[:-1] if model.endswith("*") else model
            if (
                not slash
                or not (namespace == "*" or _NAMESPACE.fullmatch(namespace))
                or not ((prefix == "" and model == "*") or MODEL_NAME.fullmatch(prefix))
            ):
                raise InputError(
                    f"FSD_SHARED_MODELS: {item[:80]!r} is not <namespace>/<model> "
                    "(either may be *, a model ending in * is a prefix)"
                )
            grants.append(Grant(namespace, model))
        return cls(tuple(grants))

    def shared_with(self, namespace: str, model: str) -> bool:
        return any(g.covers(namespace, model) for g in self.grants)

    def allows(self, namespace: str, model: str, pushed_for: str | None) -> bool:
        """Whether ``namespace`` may serve ``model``, which the operator pushed for an object of
        namespace ``pushed_for`` (None: not pushed by the operator)."""
        return pushed_for == namespace or self.shared_with(namespace, model)
