"""An InferenceModel's spec, parsed and defaulted as the CRD declares it.

The API server validates the spec against the CRD's schema (charts/fsd/crds/), but it does not
apply defaults to objects stored before a default was added, and a test or a careless client may
bypass it: everything is checked again here, and a bad spec is a permanent ``InvalidSpec``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fsd.k8s.errors import SourceError
from fsd.settings import CHANNEL

CHANNELS = ("nats", "s3")  # what the chart provides servers for; sqs and sns are AWS's (deploy/aws)
PARTITIONS = ("contiguous", "random", "min-comm")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MODEL = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")
_MEMORY = re.compile(r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")


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
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/") if self.bucket else ""


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
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise _invalid(f"{what} is not valid: {value!r}")
    return value


def parse_source(raw: Any) -> Source:
    if not isinstance(raw, Mapping):
        raise _invalid("spec.source must be an object with url or model")
    url, model = raw.get("url"), raw.get("model")
    if (url is None) == (model is None):
        raise _invalid("spec.source needs exactly one of url and model")
    neurons = raw.get("neurons")
    layers = raw.get("layers")
    shape = Source(
        neurons=None if neurons is None else _int(neurons, "spec.source.neurons", 1),
        layers=None if layers is None else _int(layers, "spec.source.layers", 1),
    )
    if model is not None:
        return dataclasses.replace(shape, model=_str(model, "spec.source.model", _MODEL))
    parts = urlsplit(_str(url, "spec.source.url"))
    if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
        raise _invalid(f"spec.source.url must be s3://bucket/prefix, got {url!r}")
    prefix = parts.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise _invalid(f"spec.source.url has an empty or relative path segment: {url!r}")
    return dataclasses.replace(shape, bucket=parts.netloc, prefix=prefix)


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
    scale_min = _int(scaling.get("min", 1), "spec.scaling.min", 0)
    scale_max = _int(scaling.get("max", 64), "spec.scaling.max", 1)
    if scale_max < scale_min:
        raise _invalid(f"spec.scaling.max ({scale_max}) is below spec.scaling.min ({scale_min})")
    return ModelSpec(
        source=parse_source(spec.get("source")),
        workers=_int(spec.get("workers"), "spec.workers", 1, 4096),
        channel=channel,
        partition=partition,
        memory=_str(resources.get("memory", "1Gi"), "spec.resources.memory", _MEMORY),
        cpu=_str(str(resources.get("cpu", "1")), "spec.resources.cpu", _CPU),
        scale_min=scale_min,
        scale_max=scale_max,
        coordinator_image=_str(image.get("coordinator", ""), "spec.image.coordinator"),
        worker_image=_str(image.get("worker", ""), "spec.image.worker"),
    )
