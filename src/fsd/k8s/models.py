"""Make sure the model store holds an InferenceModel's model, cut as its spec asks; remove it.

- ``source.model``: a model pushed with ``fsd model push`` and shared with the object's
  namespace, or pushed by the operator for an object of that namespace (:mod:`fsd.k8s.access`:
  anything else is a permanent ``ModelNotAllowed``, said the same whether it exists or not); its
  manifest must exist and list the cut ``<workers>-<partition>``. The operator cannot cut it
  again (the store keeps shards, not the network), so a missing model or cut is a permanent
  problem of the object.
- ``source.url``: a Graph Challenge folder in S3 that the operator downloads, loads, partitions
  and pushes under ``models/<name>/`` (``<name>``: the InferenceModel's name), unless the manifest
  already has the cut and came from the same URL. A new cut replaces the old ones (the
  coordinator's default worker count is the smallest cut in the manifest), and their objects are
  removed.

The operator owns only what it pushed: it writes ``models/<name>/fsd-operator-owner.json``
(namespace, name and source of the InferenceModel) before pushing, refuses to push over a model
it does not own (``ModelNameConflict``), and on deletion removes ``models/<name>/`` only when
the marker names the object being deleted. A model given as ``source.model`` is never removed.

Store objects are removed here with the same minio client as :mod:`fsd.store` (which has no
delete of its own).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsd.errors import InputError, ModelFormatError, ModelNotFound, StoreError
from fsd.k8s import source as sources
from fsd.k8s.access import ModelAccess
from fsd.k8s.errors import SourceError, StoreUnreachable
from fsd.k8s.spec import ModelSpec
from fsd.model import load_images, load_network
from fsd.store import PREFIX, Manifest, ModelStore, StoreConfig

log = logging.getLogger(__name__)

OWNER_FILE = "fsd-operator-owner.json"
MAX_OWNER_BYTES = 64 * 1024  # a marker is a few hundred bytes: a larger one is not ours


@dataclass(frozen=True)
class Owner:
    """The InferenceModel a pushed model belongs to, and where it was pushed from."""

    namespace: str
    name: str
    source: str = ""

    def same_object(self, other: Owner) -> bool:
        return (self.namespace, self.name) == (other.namespace, other.name)


@dataclass(frozen=True)
class Ensured:
    """The model the functions will serve, and whether it was pushed just now."""

    model: str
    pushed: bool
    neurons: int
    layers: int


class ModelKeeper:
    """The model store of ``config``, as the operator uses it."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        max_source_bytes: int,
        shared: ModelAccess | None = None,
    ) -> None:
        self.config = dataclasses.replace(config, connect_timeout=min(config.connect_timeout, 5.0))
        self.max_source_bytes = max_source_bytes
        self.shared = shared if shared is not None else ModelAccess()
        try:
            self._store = ModelStore(self.config)
        except (StoreError, InputError) as exc:
            raise SourceError(
                f"the model store is misconfigured: {exc}", reason="StoreMisconfigured"
            ) from None

    # -- owner marker -------------------------------------------------------------------------

    def _owner_key(self, model: str) -> str:
        return f"{PREFIX}/{model}/{OWNER_FILE}"

    def owner(self, model: str) -> Owner | None:
        """Who pushed ``model`` through the operator (None: nobody did)."""
        try:
            raw = json.loads(self._store.read(self._owner_key(model), MAX_OWNER_BYTES))
        except ModelNotFound:
            return None
        except StoreError as exc:
            raise StoreUnreachable(
                f"model store: cannot read the owner of {model}: {exc}"
            ) from None
        except (ValueError, ModelFormatError):
            return Owner("", "")  # unreadable or oversized: owned by nobody we know
        return Owner(
            str(raw.get("namespace", "")), str(raw.get("name", "")), str(raw.get("source", ""))
        )

    def _claim(self, model: str, owner: Owner) -> None:
        data = json.dumps(dataclasses.asdict(owner)).encode()
        try:
            self._store.write(self._owner_key(model), data)
        except StoreError as exc:
            raise StoreUnreachable(
                f"model store: cannot write the owner of {model}: {exc}"
            ) from None

    # -- ensure ---------------------------------------------------------------------------------

    def _manifest(self, model: str) -> Manifest | None:
        try:
            return self._store.manifest(model)
        except ModelNotFound:
            return None
        except InputError as exc:
            raise SourceError(str(exc), reason="InvalidSpec") from None
        except StoreError as exc:
            raise StoreUnreachable(str(exc)) from None

    def ensure(
        self,
        spec: ModelSpec,
        owner: Owner,
        model: str,
        on_push: Callable[[], None] | None = None,
    ) -> Ensured:
        """Check (``source.model``) or push (``source.url``) the model; see the module doc.

        ``on_push`` is called once a push is decided, before the download (phase Partitioning).
        """
        if spec.source.model:
            return self._check_pushed(spec, owner.namespace)
        return self._push_from_url(spec, owner, model, on_push)

    def _check_pushed(self, spec: ModelSpec, namespace: str) -> Ensured:
        name = spec.source.model
        if not self.shared.shared_with(namespace, name):
            pusher = self.owner(name)
            if not self.shared.allows(namespace, name, pusher.namespace if pusher else None):
                raise SourceError(
                    f"model {name!r} is not available to namespace {namespace!r}: a namespace "
                    "serves the models pushed for its own InferenceModels and those an admin "
                    "shares with it (FSD_SHARED_MODELS)",
                    reason="ModelNotAllowed",
                )
        manifest = self._manifest(name)
        if manifest is None:
            raise SourceError(
                f"the model store has no model {name!r}: push it with `fsd model push`",
                reason="ModelNotFound",
            )
        _check_shape(spec, manifest)
        if not manifest.has(spec.workers, spec.partition):
            cuts = ", ".join(sorted(manifest.partitions)) or "none"
            raise SourceError(
                f"model {name!r} is not cut for {spec.workers} workers ({spec.partition}); it has: "
                f"{cuts}. Push it with `fsd model push --workers {spec.workers} "
                f"--partition {spec.partition}`",
                reason="PartitionMissing",
            )
        return Ensured(name, False, manifest.neurons, manifest.layers)

    def _push_from_url(
        self,
        spec: ModelSpec,
        owner: Owner,
        model: str,
        on_push: Callable[[], None] | None = None,
    ) -> Ensured:
        current = self.owner(model)
        manifest = self._manifest(model)
        if current is None and manifest is not None:
            raise SourceError(
                f"the model store already has a model {model!r} that this operator did not push",
                reason="ModelNameConflict",
            )
        if current is not None and not current.same_object(owner):
            raise SourceError(
                f"model {model!r} in the store belongs to InferenceModel "
                f"{current.namespace}/{current.name}",
                reason="ModelNameConflict",
            )
        same_source = current is not None and current.source == owner.source
        if (
            manifest is not None
            and same_source
            and manifest.has(spec.workers, spec.partition)
            and _shape_mismatch(spec, manifest) is None
        ):
            return Ensured(model, False, manifest.neurons, manifest.layers)
        if on_push is not None:
            on_push()
        self._claim(model, owner)
        pushed = self._load_and_push(spec, model)
        stale = set(manifest.partitions) - set(pushed.partitions) if manifest else set()
        for cut in sorted(stale):
            self._remove_prefix(f"{PREFIX}/{model}/{cut}/")
        return Ensured(model, True, pushed.neurons, pushed.layers)

    def _load_and_push(self, spec: ModelSpec, model: str) -> Manifest:
        src = spec.source
        with tempfile.TemporaryDirectory(prefix="fsd-operator-") as tmp:
            fetched = sources.fetch(
                self._store.backend, src, Path(tmp), max_bytes=self.max_source_bytes
            )
            try:
                network = load_network(fetched.root, src.neurons, src.layers, cache=False)
                images = load_images(fetched.root, network.neurons) if fetched.images else None
            except InputError as exc:  # incl. ModelFormatError: names the file and line
                raise SourceError(f"{src.url}: {exc}", reason="InvalidSource") from None
            try:
                manifest = self._store.push(
                    network, model, [spec.workers], [spec.partition], images=images
                )
            except StoreError as exc:
                raise StoreUnreachable(str(exc)) from None
            except InputError as exc:  # e.g. more workers than neurons
                raise SourceError(str(exc), reason="InvalidSpec") from None
        log.info("pushed %s from %s for %d workers", model, src.url, spec.workers)
        return manifest

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, model: str, owner: Owner) -> int:
        """Remove ``models/<model>/`` if ``owner`` pushed it; the number of objects removed."""
        current = self.owner(model)
        if current is None or not current.same_object(owner):
            log.info(
                "no model pushed for %s/%s under %s/%s/: nothing to remove",
                owner.namespace,
                owner.name,
                PREFIX,
                model,
            )
            return 0
        return self._remove_prefix(f"{PREFIX}/{model}/")

    def _remove_prefix(self, prefix: str) -> int:
        try:
            # the owner marker goes last: a failed removal can be retried by its owner
            removed = self._store.delete_prefix(prefix, last=lambda k: k.endswith(OWNER_FILE))
        except StoreError as exc:
            raise StoreUnreachable(str(exc)) from None
        log.info("removed %d objects under %s", removed, prefix)
        return removed


def _shape_mismatch(spec: ModelSpec, manifest: Manifest) -> str | None:
    """Why the model does not have the spec's neurons/layers (None: it has, or none given)."""
    wanted: dict[str, Any] = {"neurons": spec.source.neurons, "layers": spec.source.layers}
    actual = {"neurons": manifest.neurons, "layers": manifest.layers}
    for key, value in wanted.items():
        if value is not None and value != actual[key]:
            return f"spec.source.{key} is {value} but model {manifest.name!r} has {actual[key]}"
    return None


def _check_shape(spec: ModelSpec, manifest: Manifest) -> None:
    why = _shape_mismatch(spec, manifest)
    if why is not None:
        raise SourceError(why, reason="InvalidSource")
