"""The run pipeline, one for every entry point: load -> plan -> prepare -> infer -> verify.

``fsd run``, the coordinator function (OpenFaaS and Lambda) and the benchmarks each build a
:class:`Job` from what they parsed (flags; a request and the model store) and call :func:`run`
(or its steps, to prepare once and infer many times); none of them holds a step. So a run is
planned, cut, served and checked the same way wherever it starts:

- :func:`load`: the model and its images (a binary layer folder stays on disk, read one layer
  at a time; a stored model is only its manifest: its workers fetch their own shards);
- :func:`plan`: how many partitions P each of the R = W / P replicas needs, and how many layers
  a worker holds, from the memory budget (:func:`fsd.planner.choose`);
- :func:`prepare`: the model cut for P (:func:`fsd.coordinator.prepare`, into a temporary
  folder when workers stream it; a stored model is already cut);
- :func:`infer`: the distributed inference (:func:`fsd.coordinator.infer`), its Lambda part
  priced at the budget when there is one;
- :func:`verify`: the answer against the truth for this depth, else (a model on this machine)
  the streamed float64 oracle.

:func:`run` chains them in one clean-up scope: the channel's server (started here when none is
configured: :func:`fsd.coordinator.serve`, before anything is loaded) and temporary folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fsd import planner, reference
from fsd.coordinator import Prepared, RunConfig, prepare_stored, serve
from fsd.coordinator import infer as infer_prepared
from fsd.coordinator import prepare as prepare_network
from fsd.errors import FsdError, InputError
from fsd.metrics import RunResult
from fsd.model import Images, Network, load_images, load_network
from fsd.model.source import LayerSource, as_source
from fsd.model.tsv import model_folder, open_layer_folder
from fsd.partition import check_workers
from fsd.store import Manifest, ModelStore
from fsd.task import MAX_WINDOW, ModelRef

DEFAULT_NEURONS, DEFAULT_LAYERS, DEFAULT_IMAGES = 1024, 120, 2000
#: What the planner adds to a local run's ``parallelism`` (its budget and estimates).
PLANNED = ("memory_mb", "estimate_mb", "predicted_s")

Progress = Callable[[int, int], None]
"""Called as layers finish: (layers done by the slowest worker, the model's depth)."""


# -- what goes in ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """A RadiX-Net generated on the spot with synthetic images (``fsd run`` without ``--data``)."""

    neurons: int = DEFAULT_NEURONS
    layers: int = DEFAULT_LAYERS
    images: int = DEFAULT_IMAGES
    seed: int = 0


@dataclass(frozen=True)
class Folder:
    """A Graph Challenge folder (``--data``): a binary layer folder stays on disk, read one
    layer at a time; a TSV folder is loaded (and cached in ``cache_dir``, the entry point's
    ``FSD_CACHE_DIR``; None: :func:`fsd.model.tsv.default_cache_dir`)."""

    path: Path
    neurons: int | None = None  # None: the folder's
    layers: int | None = None  # None: every layer
    images: int | None = None  # the first K images (None: all)
    cache_dir: Path | None = None


@dataclass(frozen=True)
class Local:
    """A model and images already on this machine (benchmarks, tests, a generated net)."""

    network: Network | LayerSource
    images: Images


@dataclass(frozen=True)
class Stored:
    """A model cut and pushed (``fsd model push``): the coordinator reads only its manifest and
    input owners; workers fetch their own shards. Images: ``inline`` (a request's, no truth), or
    the store's (the ``first`` K, all when None)."""

    store: ModelStore
    name: str
    manifest: Manifest
    inline: sp.csr_matrix | None = None
    first: int | None = None


@dataclass
class Job:
    """One run: the model (and its images), the run settings, and the memory budget.

    ``memory_mb`` is the memory of one worker (``--memory-mb``, ``FSD_MEMORY_MB``): the planner
    splits the model only as far as it must to fit, and Lambda is priced at it. None: this
    machine's memory shared by the workers for a local model, every worker a partition for a
    stored one, and Lambda priced at ``RunConfig.memory_mb``. ``partitions`` forces P.
    """

    model: Generated | Folder | Local | Stored
    config: RunConfig
    memory_mb: float | None = None
    partitions: int | None = None


# -- what each step hands on -------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """The job's model and images: a model on this machine (``network``, read through
    ``source``), or a stored one (``stored``)."""

    images: Images
    network: Network | LayerSource | None = None
    stored: Stored | None = None

    @property
    def source(self) -> LayerSource | None:
        if self.network is None or not isinstance(self.network, Network):
            return self.network
        return as_source(self.network)

    @property
    def depth(self) -> int:
        if self.stored is not None:
            return self.stored.manifest.layers
        assert self.network is not None
        return self.network.depth


@dataclass(frozen=True)
class Choice:
    """How the workers are used: P partitions per replica (R = W / P replicas), each worker
    holding ``window`` layers; ``planned``: the planner's estimate, when it was asked."""

    partitions: int
    window: int
    planned: planner.Parallelism | None = None


# -- the steps ---------------------------------------------------------------------------------


def open_model(
    data: Path,
    neurons: int | None,
    layers: int | None,
    dtype: str,
    cache_dir: Path | None = None,
) -> Network | LayerSource:
    """``data``'s model: a binary layer folder stays on disk (a source read one layer at a
    time, never whole); a TSV folder is loaded (and cached in ``cache_dir``)."""
    folder, tsv_neurons = model_folder(data, neurons)
    if tsv_neurons is None:
        return open_layer_folder(folder, neurons, layers, dtype)
    return load_network(data, neurons, layers, dtype=dtype, cache_dir=cache_dir)


def load(job: Job) -> Loaded:
    """The job's model and images (see :class:`Loaded`)."""
    model = job.model
    if isinstance(model, Local):
        return Loaded(model.images, network=model.network)
    if isinstance(model, Generated):
        from fsd.model.generate import radix_net, synthetic_images  # noqa: PLC0415

        network = radix_net(model.neurons, model.layers, model.seed)
        return Loaded(synthetic_images(model.neurons, model.images, model.seed), network=network)
    if isinstance(model, Folder):
        opened = open_model(
            model.path, model.neurons, model.layers, job.config.dtype, model.cache_dir
        )
        images = load_images(model.path, opened.neurons, model.images, job.config.dtype)
        return Loaded(images, network=opened)
    if model.inline is not None:
        return Loaded(Images(model.inline), stored=model)
    images = model.store.images(model.name, model.first, manifest=model.manifest)
    return Loaded(images, stored=model)


def plan(job: Job, loaded: Loaded) -> Choice:
    """P and the window for the job's W workers (:func:`fsd.planner.choose`).

    A stored model without a budget runs every worker as a partition (it must then be cut for
    W); with one, the planner takes the fewest partitions that fit among the cuts the store
    holds for the job's partitioner that divide W, each function on its own processor.
    """
    workers, images = job.config.workers, max(loaded.images.count, 1)
    value_bytes = np.dtype(job.config.dtype).itemsize
    if loaded.stored is None:
        source = loaded.source
        assert source is not None
        check_workers(workers, source.neurons)
        chosen = planner.choose(
            workers=workers,
            neurons=source.neurons,
            depth=source.depth,
            edges=source.edges(),
            images=loaded.images.count,
            memory_mb=job.memory_mb,
            partitions=job.partitions,
            value_bytes=value_bytes,
        )
        return Choice(chosen.partitions, chosen.window, chosen)
    manifest = loaded.stored.manifest
    every = min(manifest.layers, MAX_WINDOW)
    if job.memory_mb is None:
        return Choice(workers, every)
    partition = job.config.partition
    cuts = sorted(
        int(info["workers"])
        for info in manifest.partitions.values()
        if info.get("partition") == partition and workers % int(info["workers"]) == 0
    )
    if not cuts:
        raise InputError(
            f"workers: the model is not cut with {partition!r} for {workers} workers or any "
            f"divisor of it (push it with --workers)"
        )
    chosen = planner.choose(
        workers=workers,
        neurons=manifest.neurons,
        depth=manifest.layers,
        edges=manifest.edges,
        images=images,
        memory_mb=job.memory_mb,
        allowed=cuts,
        value_bytes=np.dtype(manifest.dtype).itemsize,
        cores=workers,  # each function its own processor
    )
    return Choice(chosen.partitions, min(chosen.window, every), chosen)


def settings(job: Job, choice: Choice) -> RunConfig:
    """The job's run settings with the plan's P and window, and Lambda priced at the budget
    (in whole MB, as Lambda's memory is set)."""
    memory = job.config.memory_mb if job.memory_mb is None else math.ceil(job.memory_mb)
    return dataclasses.replace(
        job.config, partitions=choice.partitions, window=choice.window, memory_mb=memory
    )


def prepare(
    job: Job, loaded: Loaded, choice: Choice, stack: contextlib.ExitStack | None = None
) -> Prepared:
    """The model cut for P (:func:`fsd.coordinator.prepare`); a stored model is already cut.

    A streamed model (a binary layer folder) is cut into a temporary folder (removed by
    ``stack``), so that no process holds it whole; so is any model when workers hold only a
    window of its layers. With one partition the cut is the whole layer: workers read it from
    the model's own folder.
    """
    if loaded.stored is not None:
        stored = loaded.stored
        ref = ModelRef(stored.name, choice.partitions, job.config.partition)
        prepared = prepare_stored(stored.store, ref, stored.manifest)
        prepared.window = choice.window
        return prepared
    network = loaded.network
    assert network is not None
    streamed = not isinstance(network, Network)
    folder = None
    if (streamed and choice.partitions > 1) or (not streamed and choice.window < network.depth):
        if stack is None:
            raise FsdError("a model cut into a folder needs a stack to remove it")
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fsd-layers-")))
    return prepare_network(network, settings(job, choice), folder=folder, window=choice.window)


def infer(
    job: Job,
    loaded: Loaded,
    choice: Choice,
    prepared: Prepared,
    progress: Progress | None = None,
) -> RunResult:
    """The distributed inference of the job's images (:func:`fsd.coordinator.infer`)."""
    depth = prepared.depth
    on_layer = None if progress is None else (lambda layer: progress(layer, depth))
    return infer_prepared(prepared, loaded.images.matrix, settings(job, choice), on_layer)


def verify(result: RunResult, loaded: Loaded) -> None:
    """Against the truth for this depth when there is one, else, for a model on this machine,
    against the oracle (streamed: one layer of weights at a time); a stored model's inline
    images stay unchecked."""
    truth = loaded.images.truth.get(loaded.depth)
    if truth is not None:
        result.checked_against = "truth"
        result.correct = bool(np.array_equal(result.categories, truth))
        return
    source = loaded.source
    if source is None:
        return
    final = reference.infer_streamed(source, loaded.images.matrix)
    expected = reference.categories(final)
    result.checked_against = "oracle"
    result.correct = bool(np.array_equal(result.categories, expected)) and bool(
        np.allclose(result.row_sums, reference.row_sums(final)[expected - 1], rtol=1e-3, atol=1e-3)
    )


def run(job: Job, progress: Progress | None = None) -> RunResult:
    """The whole pipeline in one clean-up scope (servers started here, temporary folders).

    The channel's server is settled first (an embedded one started when none is configured,
    and a missing extra said before any loading). A local run reports the seconds spent loading
    and cutting (planning apart) and the planner's budget and estimates in ``parallelism``.
    """
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(serve(job.config))
        job = dataclasses.replace(
            job, config=dataclasses.replace(job.config, channel_config=served)
        )
        t0 = time.perf_counter()
        loaded = load(job)
        choice = plan(job, loaded)
        prepared = prepare(job, loaded, choice, stack)
        load_seconds = time.perf_counter() - t0 - prepared.plan_seconds
        result = infer(job, loaded, choice, prepared, progress)
    if loaded.stored is None:  # a stored model is loaded by its workers
        result.load_seconds = load_seconds
        if choice.planned is not None:
            planned = choice.planned.to_json()
            result.parallelism |= {k: planned[k] for k in PLANNED}
    verify(result, loaded)
    return result
