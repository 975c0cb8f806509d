"""The coordinator function: validate a request, run the inference on worker functions, answer.

Everything in the request is checked before any side effect (a store request, a connection, a
worker invoked): strict, finite JSON within limits (:mod:`fsd.functions.parse`), the schema
``request.schema.json`` (docs/api/), this function's own limits (:class:`Limits`), and whether
it serves the model at all (``FSD_MODELS``: a model it does not serve is an unknown model, and
the store is not even asked).

Status codes (docs/api.md): 200 answer; 400 malformed JSON or invalid request; 404 unknown model
or no stored images; 413 body too large (the template's server, before this runs); 503 not
configured, or channel or model store unreachable; 502 a worker failed; 504 a worker or the run
timed out. Errors are ``{"error", "detail"}`` (plus ``worker`` for 502/504), never with a secret.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import observe
from fsd.coordinator import RunConfig
from fsd.errors import (
    ChannelError,
    FsdError,
    InputError,
    ModelFormatError,
    ModelNotFound,
    StoreError,
    WorkerError,
)
from fsd.functions.config import (
    Limits,
    ModelFilter,
    NotConfigured,
    Transports,
    deployment_secret,
    memory_budget,
    own_channels,
    platform,
    secret_values,
)
from fsd.functions.http import Reply, error, scrub
from fsd.functions.parse import load_json, problem
from fsd.run import Job, Stored, run
from fsd.store import ModelStore
from fsd.variables import function_env

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("request.schema.json")  # docs/api/ links to it
BULK = (("inputs", "rows"), ("inputs", "cols"), ("inputs", "values"))  # up to a million each


def handle_request(body: bytes, environ: Mapping[str, str] | None = None) -> Reply:
    """One inference request; never raises (every failure is a status and a JSON error)."""
    t0 = time.perf_counter()
    env = function_env(os.environ if environ is None else environ)
    status, reply = scrub(_handle(body, env), secret_values(env))
    model = str(reply.get("model", "unknown"))
    observe.observe_request(
        "coordinator", model, str(reply.get("channel", "")), time.perf_counter() - t0
    )
    if status >= 400:
        observe.observe_error("coordinator", reply.get("error", "error").replace(" ", "_"))
    return status, reply


def _check_inline(inputs: dict[str, Any]) -> None:
    """What can be checked of inline images without the model (their width needs it)."""
    rows, cols = inputs["rows"], inputs["cols"]
    values = inputs.get("values")
    if len(rows) != len(cols) or (values is not None and len(values) != len(rows)):
        raise InputError("inputs: rows, cols and values must have the same length")
    if rows and max(rows) > inputs["count"]:
        raise InputError(f"inputs/rows: row {max(rows)} > count {inputs['count']}")


def _inline_images(inputs: dict[str, Any], neurons: int, dtype: str) -> sp.csr_matrix:
    """The inline images as the model's workers will hold them, checked before any is invoked:
    duplicate (row, col) entries are summed (as SciPy does), and every sum must be finite in
    the model's ``dtype`` (two float32 maxima sum to infinity)."""
    rows, cols = inputs["rows"], inputs["cols"]
    values = inputs.get("values") or [1.0] * len(rows)
    if cols and max(cols) > neurons:
        raise InputError(f"inputs/cols: column {max(cols)} > {neurons} pixels of the model")
    r = np.asarray(rows, np.int64) - 1
    c = np.asarray(cols, np.int64) - 1
    shape = (int(inputs["count"]), neurons)
    matrix = sp.csr_matrix((np.asarray(values, np.float64), (r, c)), shape=shape)
    matrix.sum_duplicates()
    limit = float(np.finfo(np.dtype(dtype)).max)
    if matrix.nnz and not np.abs(matrix.data).max() <= limit:
        raise InputError(
            f"inputs/values: entries of one (row, col) sum beyond the model's {dtype} range"
        )
    return matrix


def _handle(body: bytes, env: dict[str, str]) -> Reply:
    try:
        limits = Limits.from_env(env)
        served = ModelFilter.from_env(env)
        transports = Transports.from_env(env)
        budget = memory_budget(env)
        deployment_secret(env)  # refuse to run at all without one (the launcher signs with it)
    except NotConfigured as exc:
        return error(503, "not configured", str(exc))
    try:
        request = load_json(body)
    except InputError as exc:
        return error(400, "malformed JSON", str(exc))
    where = problem(SCHEMA_PATH, request, bulk=BULK)
    if where:
        return error(400, "invalid request", where)
    name = request.setdefault("model", served.only)
    if name is None:
        return error(400, "invalid request", "model: required (this deployment serves several)")
    if not served.allows(name):
        return error(404, "unknown model", f"unknown model {name!r}")
    try:
        # only among the transports this deployment runs, before anything is asked or dialled
        request["channel"] = transports.choose(request.get("channel"))
        return _infer(request, env, limits, budget)
    except ModelNotFound as exc:
        return error(404, "unknown model", str(exc))
    except ModelFormatError as exc:  # the store's fault, not the request's
        return error(502, "malformed model", str(exc))
    except WorkerError as exc:
        timed_out = exc.timed_out or "timed out" in exc.detail
        return error(
            504 if timed_out else 502,
            "worker timed out" if timed_out else "worker failed",
            str(exc),
            worker=exc.worker,
        )
    except NotConfigured as exc:
        return error(503, "not configured", str(exc))
    except (ChannelError, StoreError) as exc:  # the store answers as it always did
        return error(503, "channel unreachable", str(exc))
    except InputError as exc:
        return error(400, "invalid request", str(exc))
    except FsdError as exc:
        return error(500, "internal error", str(exc))


def _bounds(request: dict[str, Any], limits: Limits) -> None:
    """The request against this function's own limits (the schema's bounds are wider)."""
    if request.get("workers", 1) > limits.max_workers:
        raise InputError(f"workers: {request['workers']} > {limits.max_workers} (FSD_MAX_WORKERS)")
    if request.get("timeout", 0) > limits.max_timeout:
        raise InputError(
            f"timeout: {request['timeout']:g} s > {limits.max_timeout:g} s (FSD_MAX_TIMEOUT)"
        )
    count = request["images"].get("first") if "images" in request else request["inputs"]["count"]
    if count is not None and count > limits.max_images:
        raise InputError(f"images: {count} > {limits.max_images} (FSD_MAX_IMAGES)")
    if "inputs" in request:
        _check_inline(request["inputs"])


def _infer(
    request: dict[str, Any], env: dict[str, str], limits: Limits, budget: float | None
) -> Reply:
    _bounds(request, limits)
    name = request["model"]
    kind = request["channel"]
    transport, store_config = own_channels(kind, env)
    timeout = float(request.get("timeout", limits.timeout))
    store = ModelStore(store_config)
    manifest = store.manifest(name)
    workers = int(request.get("workers") or _default_workers(manifest.partitions))
    partition = request.get("partition") or _default_partition(manifest.partitions, workers)
    if workers > manifest.neurons:
        return error(400, "invalid request", f"workers: {workers} > {manifest.neurons} neurons")
    if workers > limits.max_workers:
        raise InputError(f"workers: {workers} > {limits.max_workers} (FSD_MAX_WORKERS)")
    if "images" in request:
        if not manifest.images:
            return error(404, "no stored images", f"model {name!r} was pushed without images")
        if request["images"].get("first", manifest.images) > limits.max_images:
            raise InputError(
                f"images: the model stores {manifest.images} images, more than "
                f"{limits.max_images} (FSD_MAX_IMAGES): ask for the first ones"
            )
        model = Stored(store, name, manifest, first=request["images"].get("first"))
    else:
        inline = _inline_images(request["inputs"], manifest.neurons, manifest.dtype)
        model = Stored(store, name, manifest, inline=inline)
    where = platform(env)  # this function's platform and its options, read once
    config = RunConfig(
        workers=workers,
        channel=kind,
        partition=partition,
        dtype=manifest.dtype,
        timeout=timeout,
        layer_timeout=min(timeout, limits.layer_timeout),
        channel_config=transport,
        platform=where.kind,
        platform_options=where.options,
        fanout=limits.fanout,
    )
    result = run(Job(model, config, memory_mb=budget))
    out = result.to_json()
    out["model"] = name
    observe.observe_run(result, name)
    return 200, out


def _default_workers(partitions: dict[str, dict[str, Any]]) -> int:
    if not partitions:
        raise InputError("the model has no partitions; push it with --workers")
    return min(int(p["workers"]) for p in partitions.values())


def _default_partition(partitions: dict[str, dict[str, Any]], workers: int) -> str:
    """The partitioner of the cuts that serve ``workers`` (min-comm when there is one)."""
    cut = sorted(p["partition"] for p in partitions.values() if workers % int(p["workers"]) == 0)
    if not cut:
        raise InputError(f"workers: the model is not cut for {workers} workers")
    return "min-comm" if "min-comm" in cut else cut[0]
