"""What a worker is asked to do: the task travels with its launch, the model reference to the store.

Kept apart from :mod:`fsd.worker` (which pulls in the compiled kernels) so that launchers and
functions can build, bound and serialise tasks without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsd.channels.base import ChannelConfig
from fsd.errors import FsdError
from fsd.redact import redact

if TYPE_CHECKING:
    from fsd.shard import Shard


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to fetch its shard: the model and how it was cut."""

    name: str
    workers: int
    partition: str


@dataclass
class WorkerTask:
    """Everything a worker needs; travels to the worker with its launch.

    A forked local worker inherits ``shard``; a remote one gets ``model`` instead and downloads
    its shard from the model store (``shard`` is None on the wire, see :meth:`to_json`).
    """

    run: bytes
    worker: int
    workers: int
    images: int
    shard: Shard | None
    bias: float
    ymax: float
    dtype: str
    channel: ChannelConfig
    layer_timeout: float = 60.0
    model: ModelRef | None = None

    def to_json(self) -> dict[str, Any]:
        """The task as a function invocation body: no shard, no secrets."""
        if self.model is None:
            raise FsdError("a remote worker needs a model in the store (fsd model push)")
        ch = self.channel
        return {
            "run": self.run.hex(),
            "worker": self.worker,
            "workers": self.workers,
            "images": self.images,
            "bias": self.bias,
            "ymax": self.ymax,
            "dtype": self.dtype,
            "layer_timeout": self.layer_timeout,
            "model": {
                "name": self.model.name,
                "workers": self.model.workers,
                "partition": self.model.partition,
            },
            "channel": {
                "kind": ch.kind,
                "address": redact(ch.address),
                "max_frame": ch.max_frame,
                "compress": ch.compress,
                "namespace": ch.namespace,
                "bucket": ch.bucket,
                "region": ch.region,
            },
        }
