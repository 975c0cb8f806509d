"""What a worker is asked to do: the task travels with its launch, the model reference to the store.

Kept apart from :mod:`fsd.worker` (which pulls in the compiled kernels) so that launchers and
functions can build, bound and serialise tasks without loading the engine.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fsd.channels.base import ChannelConfig
from fsd.errors import FsdError, InputError
from fsd.settings import LAYER_TIMEOUT

if TYPE_CHECKING:
    import numpy as np

    from fsd.shard import LayerShard, Sends, Shard

MAX_WINDOW = 1024
"""Most layer shards a streaming worker may hold at once."""
MAX_RUN_IMAGES = 1 << 32
"""Most images one run may number (a task's, a stored model's): row ids travel as u32."""


class LayerSupply(Protocol):
    """Where a streaming worker gets its layers, one at a time and in order, each checked
    (:class:`fsd.store.StoredLayers`: a model store or a local folder)."""

    @property
    def inputs(self) -> np.ndarray: ...
    @property
    def depth(self) -> int: ...
    @property
    def first(self) -> Sends: ...

    def layer(self, k: int) -> tuple[LayerShard, Sends]:
        """Layer ``k`` (0-based) and the sends of layer k+1."""
        ...


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to fetch its shard: the model and how it was cut."""

    name: str
    workers: int
    partition: str


@dataclass
class WorkerTask:
    """Everything a worker needs; travels to the worker with its launch.

    A forked local worker inherits ``shard`` or ``layers`` (a supply it streams from: a local
    folder store); a remote one gets ``model`` instead and downloads its shard from the model
    store (``shard`` and ``layers`` are None on the wire, see :meth:`to_json`). ``window``: how
    many layer shards a streaming worker holds at once, the one computing included (1: fetch
    after compute; 2: fetch the next while one computes). A function worker spends it on both
    what it keeps warm between invocations and what it streams: below the depth, it keeps the
    first ``window - 2`` layers and streams the others two at a time
    (:func:`fsd.store.split_window`).
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
    layer_timeout: float = LAYER_TIMEOUT
    model: ModelRef | None = None
    window: int = 1
    layers: LayerSupply | None = None
    # when the worker must have given up and reported, in time.time() (0: no deadline): a bit
    # before the coordinator's own, so a stalled peer is named by those waiting for it; a wall
    # clock, as the invocation's expiry: hosts' clocks must agree within a second or two
    deadline: float = 0.0

    def wait(self) -> float:
        """Seconds to wait for one layer's messages: ``layer_timeout``, or what is left until
        ``deadline`` when that is sooner (never below zero)."""
        if not self.deadline:
            return self.layer_timeout
        return max(0.0, min(self.layer_timeout, self.deadline - time.time()))

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            raise InputError(f"window must be an integer, got {type(self.window).__name__}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise InputError(f"window {self.window} is outside 1..{MAX_WINDOW}")

    def to_json(self) -> dict[str, Any]:
        """The task as a function invocation body: no shard, no secret, and no address.

        Where to connect (address, credentials, namespace, bucket, region) is the receiving
        function's own configuration: a body that could name it would let whoever can invoke a
        worker point it, and the secrets it holds, anywhere.
        """
        if self.model is None:
            raise FsdError("a remote worker needs a model in the store (fsd model push)")
        body: dict[str, Any] = {"window": self.window} if self.window != 1 else {}
        if self.deadline:
            body["deadline"] = round(self.deadline, 3)
        return body | {
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
                "kind": self.channel.kind,
                "max_frame": self.channel.max_frame,
                "compress": self.channel.compress,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], channel: ChannelConfig) -> WorkerTask:
        """The task of a body made by :meth:`to_json`, on the receiver's own ``channel``.

        ``data`` must already be validated (the worker function checks it against its schema
        and its limits); only ``max_frame`` and ``compress`` are taken from it for the channel.
        """
        ch, model = data["channel"], data["model"]
        config = dataclasses.replace(
            channel,
            max_frame=int(ch.get("max_frame", channel.max_frame)),
            compress=bool(ch.get("compress", channel.compress)),
        )
        return cls(
            run=bytes.fromhex(data["run"]),
            worker=int(data["worker"]),
            workers=int(data["workers"]),
            images=int(data["images"]),
            shard=None,
            bias=float(data["bias"]),
            ymax=float(data["ymax"]),
            dtype=str(data["dtype"]),
            channel=config,
            layer_timeout=float(data["layer_timeout"]),
            model=ModelRef(str(model["name"]), int(model["workers"]), str(model["partition"])),
            window=int(data.get("window", 1)),
            deadline=float(data.get("deadline", 0.0)),
        )
