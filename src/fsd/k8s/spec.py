"""An InferenceModel's spec, parsed and defaulted as the CRD declares it.

The API server validates the spec against the CRD's schema (charts/fsd/crds/), but it does not
apply defaults to objects stored before a default was added, and a test or a careless client may
bypass it: everything is checked again here, and a bad spec is a permanent ``InvalidSpec``
(reported as Degraded, never retried until the spec changes).

Patterns match the whole value (``fullmatch``): Python's ``$`` also matches before a trailing
newline, so ``"1Gi\n"`` passed a ``^...$`` check and then broke the quantity arithmetic (a
ValueError, retried forever). Numbers have bounds at both ends, the same as the CRD's:
``resources.memory`` up to :data:`MAX_MEMORY_MIB` (whether it leaves each worker invocation
enough is checked with the operator's settings, :func:`fsd.k8s.desired.worker_budget_mb`),
``resources.cpu`` from 1m to :data:`MAX_CPU` cores, ``scaling.max`` up to :data:`MAX_REPLICAS`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fsd import channels, stores
from fsd.k8s.errors import SourceError

CHANNELS = channels.stacked()
"""What ``spec.channel`` may name: the transports whose servers the chart runs (the CRD's enum
lists them too; tests/k8s/test_chart.py keeps the two equal). The others are a cloud's own."""
CHANNEL = channels.DEPLOYED
PARTITIONS = ("contiguous", "random", "min-comm")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # fsd.store's model names
_MEMORY = re.compile(r"([0-9]{1,13})(Ki|Mi|Gi|Ti|k|M|G|T)?")
_CPU = re.compile(r"([0-9]{1,6})(?:\.([0-9]{1,3}))?|([0-9]{1,9})m")
_IMAGE = re.compile(r"[^\s]{1,512}")
_PLATFORM = re.compile(r"[a-z][a-z0-9-]{0,31}")  # a name of fsd.k8s.platforms (checked there)

MAX_WORKERS = 4096
MAX_NEURONS = 1 << 24
MAX_LAYERS = 1 << 16
MAX_MEMORY_MIB = 1 << 20
"""The most memory a function may ask (1 TiB): anything above is a typo, not a node."""
MAX_CPU = 256
"""The most cores a function may ask."""
MAX_REPLICAS = 4096
"""The largest ``scaling.max``: replicas of one function."""
MAX_URL = 1024
_QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclass(frozen=True)
class Source:
    """Where the model comes from: a Graph Challenge folder in S3, or a pushed model."""

    bucket: str = ""  # url: s3://bucket/prefix
    prefix: str = ""
    model: str = ""  # or the name given to `fsd model push`
    neurons: int | None = None
    layers: int | None = None

    @property
    def url(self) -> str:
        scheme = _scheme()
        return f"{scheme}://{self.bucket}/{self.prefix}".rstrip("/") if self.bucket else ""


@dataclass(frozen=True)
class ModelSpec:
    source: Source
    workers: int
    channel: str = CHANNEL
    partition: str = "min-comm"
    memory: str = "1Gi"
    cpu: str = "1"
    scale_min: int = 1
    scale_max: int = 64
    coordinator_image: str = ""
    worker_image: str = ""
    platform: str = ""  # "": the operator's FSD_PLATFORM (fsd.k8s.platforms)


def _invalid(message: str) -> SourceError:
    return SourceError(message, reason="InvalidSpec")


def _int(value: Any, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise _invalid(f"{what} must be {bounds}, got {value}")
    return value


def _str(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    """``value`` if it is a string ``pattern`` matches whole (a trailing newline included)."""
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        raise _invalid(f"{what} is not valid: {str(value)[:80]!r}")
    return value


def memory_mib(quantity: str) -> int:
    """A memory quantity as Kubernetes writes it (``1Gi``, ``512Mi``, ``2G``) in whole MiB,
    rounded down; :class:`SourceError` (InvalidSpec) for anything else."""
    m = _MEMORY.fullmatch(quantity)
    if m is None:
        raise _invalid(f"spec.resources.memory is not a quantity like 1Gi or 512Mi: {quantity!r}")
    return int(m.group(1)) * _QUANTITY[m.group(2) or ""] // 2**20


def cpu_millis(quantity: str) -> int:
    """A CPU quantity (``1``, ``0.5``, ``250m``) in millicores; :class:`SourceError`
    (InvalidSpec) for anything else (Kubernetes has no finer precision than 1m)."""
    m = _CPU.fullmatch(quantity)
    if m is None:
        raise _invalid(f"spec.resources.cpu is not a quantity like 1, 0.5 or 250m: {quantity!r}")
    cores, fraction, millis = m.groups()
    if millis is not None:
        return int(millis)
    return int(cores) * 1000 + int((fraction or "").ljust(3, "0"))


def _memory(value: Any) -> str:
    quantity = _str(value, "spec.resources.memory")
    mib = memory_mib(quantity)
    if not 1 <= mib <= MAX_MEMORY_MIB:
        raise _invalid(
            f"spec.resources.memory must be from 1Mi to {MAX_MEMORY_MIB >> 20}Ti, got {quantity!r}"
        )
    return quantity


def _cpu(value: Any) -> str:
    quantity = _str(
        str(value) if isinstance(value, int) and not isinstance(value, bool) else value,
        "spec.resources.cpu",
    )
    if not 1 <= cpu_millis(quantity) <= MAX_CPU * 1000:
        raise _invalid(f"spec.resources.cpu must be from 1m to {MAX_CPU} cores, got {quantity!r}")
    return quantity


def _image(value: Any, what: str) -> str:
    """An image reference, or "" for the operator's default (its prefixes are checked later)."""
    return "" if value == "" else _str(value, what, _IMAGE)


def parse_source(raw: Any) -> Source:
    if not isinstance(raw, Mapping):
        raise _invalid("spec.source must be an object with url or model")
    url, model = raw.get("url"), raw.get("model")
    if (url is None) == (model is None):
        raise _invalid("spec.source needs exactly one of url and model")
    neurons = raw.get("neurons")
    layers = raw.get("layers")
    shape = Source(
        neurons=None if neurons is None else _int(neurons, "spec.source.neurons", 1, MAX_NEURONS),
        layers=None if layers is None else _int(layers, "spec.source.layers", 1, MAX_LAYERS),
    )
    if model is not None:
        return dataclasses.replace(shape, model=_str(model, "spec.source.model", MODEL_NAME))
    scheme = _scheme()
    if not isinstance(url, str) or len(url) > MAX_URL or not url.isprintable():
        raise _invalid(f"spec.source.url must be {scheme}://bucket/prefix, got {str(url)[:80]!r}")
    parts = urlsplit(url)
    bad = parts.scheme != scheme or parts.query or parts.fragment
    if bad or not _BUCKET.fullmatch(parts.netloc):
        raise _invalid(f"spec.source.url must be {scheme}://bucket/prefix, got {url!r}")
    prefix = parts.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise _invalid(f"spec.source.url has an empty or relative path segment: {url!r}")
    return dataclasses.replace(shape, bucket=parts.netloc, prefix=prefix)


def _scheme() -> str:
    """The URL scheme of the deployment's model store (its source folders live there)."""
    return stores.backend(stores.DEFAULT).SCHEME


def parse_spec(spec: Mapping[str, Any]) -> ModelSpec:
    """The spec with the CRD's defaults; raises :class:`SourceError` (``InvalidSpec``)."""
    resources = spec.get("resources") or {}
    scaling = spec.get("scaling") or {}
    image = spec.get("image") or {}
    if not all(isinstance(x, Mapping) for x in (resources, scaling, image)):
        raise _invalid("spec.resources, spec.scaling and spec.image must be objects")
    channel = spec.get("channel", CHANNEL)
    partition = spec.get("partition", "min-comm")
    if channel not in CHANNELS:
        raise _invalid(f"spec.channel must be one of {', '.join(CHANNELS)}: {channel!r}")
    if partition not in PARTITIONS:
        raise _invalid(f"spec.partition must be one of {', '.join(PARTITIONS)}: {partition!r}")
    scale_min = _int(scaling.get("min", 1), "spec.scaling.min", 0, MAX_REPLICAS)
    scale_max = _int(scaling.get("max", 64), "spec.scaling.max", 1, MAX_REPLICAS)
    if scale_max < scale_min:
        raise _invalid(f"spec.scaling.max ({scale_max}) is below spec.scaling.min ({scale_min})")
    return ModelSpec(
        source=parse_source(spec.get("source")),
        workers=_int(spec.get("workers"), "spec.workers", 1, MAX_WORKERS),
        channel=channel,
        partition=partition,
        memory=_memory(resources.get("memory", "1Gi")),
        cpu=_cpu(resources.get("cpu", "1")),
        scale_min=scale_min,
        scale_max=scale_max,
        coordinator_image=_image(image.get("coordinator", ""), "spec.image.coordinator"),
        worker_image=_image(image.get("worker", ""), "spec.image.worker"),
        platform=""
        if spec.get("platform") is None
        else _str(spec["platform"], "spec.platform", _PLATFORM),
    )
