"""Fetch a Graph Challenge folder from a bucket of the model store into a local directory.

``spec.source.url`` names a bucket and a prefix (:class:`fsd.k8s.spec.Source`): a folder in the
official layout (:mod:`fsd.model.tsv`), read through the model store's backend::

    <prefix>/neuron{N}/n{N}-l{k}.tsv[.gz]          layer k
    <prefix>/sparse-images-{N}.tsv[.gz]            images (optional)
    <prefix>/neuron{N}-l{L}-categories.tsv[.gz]    truth after L layers (optional)

Only keys of exactly these shapes are downloaded (a key never becomes an arbitrary path), only for
the requested ``neurons`` and ``layers`` when the spec names them, and never more than a byte
budget in total.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from fsd.errors import ModelNotFound, StoreError
from fsd.k8s.errors import SourceError, StoreUnreachable
from fsd.k8s.spec import Source
from fsd.stores import StoreBackend

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^neuron(\d+)/n(\d+)-l(\d+)\.tsv(\.gz)?$")
_IMAGES = re.compile(r"^sparse-images-(\d+)\.tsv(\.gz)?$")
_CATEGORIES = re.compile(r"^neuron(\d+)-l(\d+)-categories\.tsv(\.gz)?$")


@dataclass(frozen=True)
class Fetched:
    """What was downloaded: the folder, its neuron sizes, and whether images came along."""

    root: Path
    neurons: tuple[int, ...]
    images: bool
    files: int
    size: int


def wanted(relative: str, source: Source) -> bool:
    """Whether ``relative`` (a key under the prefix) is a file of the layout we need."""
    if m := _LAYER.match(relative):
        n, n2, k = (int(g) for g in m.groups()[:3])
        return (
            n == n2
            and (source.neurons is None or n == source.neurons)
            and (source.layers is None or k <= source.layers)
        )
    if m := _IMAGES.match(relative):
        return source.neurons is None or int(m.group(1)) == source.neurons
    if m := _CATEGORIES.match(relative):
        n, depth = int(m.group(1)), int(m.group(2))
        return (source.neurons is None or n == source.neurons) and (
            source.layers is None or depth <= source.layers
        )
    return False


def _failure(exc: ModelNotFound | StoreError, where: str) -> Exception:
    """A missing bucket is the source's fault; anything else the store's, tried again later."""
    if isinstance(exc, ModelNotFound):
        return SourceError(f"{where}: {exc}", reason="SourceNotFound")
    return StoreUnreachable(f"{where}: {exc}")


def fetch(objects: StoreBackend, source: Source, dest: Path, *, max_bytes: int) -> Fetched:
    """Download the layout's files under ``source``'s prefix into ``dest``, from ``source``'s
    bucket of the model store (its backend, :attr:`fsd.store.ModelStore.backend`)."""
    where = source.url
    prefix = f"{source.prefix}/" if source.prefix else ""
    try:
        listed = objects.list_folder(source.bucket, prefix)
    except (ModelNotFound, StoreError) as exc:
        raise _failure(exc, where) from None
    keys = [(key, size) for key, size in listed if wanted(key[len(prefix) :], source)]
    if not any(_LAYER.match(key[len(prefix) :]) for key, _ in keys):
        sizes = f" for {source.neurons} neurons" if source.neurons else ""
        raise SourceError(
            f"{where}: no Graph Challenge layer files (neuron<N>/n<N>-l<k>.tsv){sizes}",
            reason="SourceNotFound",
        )
    total = sum(size for _, size in keys)
    if total > max_bytes:
        raise SourceError(
            f"{where}: {total} bytes to download, over the operator's limit of {max_bytes} "
            "(FSD_OPERATOR_MAX_SOURCE_MB)",
            reason="SourceTooLarge",
        )
    for key, _ in keys:
        target = dest / key[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            objects.download(source.bucket, key, target)
        except (ModelNotFound, StoreError) as exc:
            raise _failure(exc, f"{where} ({key})") from None
    relative = [key[len(prefix) :] for key, _ in keys]
    neurons = sorted({int(m.group(1)) for r in relative if (m := _LAYER.match(r))})
    log.info("fetched %d files (%d bytes) from %s", len(keys), total, where)
    return Fetched(
        root=dest,
        neurons=tuple(neurons),
        images=any(_IMAGES.match(r) for r in relative),
        files=len(keys),
        size=total,
    )
