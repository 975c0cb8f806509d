"""The coordinator function: validate a request, run the inference on worker functions, answer.

Status codes (docs/api.md): 200 answer; 400 malformed or invalid request (JSON Schema in
docs/api/request.schema.json); 404 unknown model or no stored images; 413 body too large (the
template's server, before this runs); 503 channel or model store unreachable; 502 a worker failed;
504 a worker or the run timed out. Errors are ``{"error", "detail"}`` (plus ``worker`` for 502/504).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import scipy.sparse as sp

from fsd import observe
from fsd.channels.settings import channel_config
from fsd.coordinator import RunConfig, infer, prepare_stored
from fsd.errors import ChannelError, FsdError, InputError, WorkerError
from fsd.settings import function_env
from fsd.store import ModelNotFound, ModelStore
from fsd.task import ModelRef

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("request.schema.json")  # docs/api/ links to it
DEFAULT_TIMEOUT = 120.0
DEFAULT_FANOUT = 16  # above this many workers they are invoked as a tree (FSD_FANOUT)

Reply = tuple[int, dict[str, Any]]


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _error(status: int, error: str, detail: str, **extra: Any) -> Reply:
    return status, {"error": error, "detail": detail, **extra}


def _invalid(request: Any) -> str | None:
    errors = sorted(_validator().iter_errors(request), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = "/".join(str(p) for p in first.absolute_path) or "request"
    return f"{where}: {first.message}"


def _inline_images(inputs: dict[str, Any], neurons: int) -> sp.csr_matrix:
    rows, cols = inputs["rows"], inputs["cols"]
    values = inputs.get("values") or [1.0] * len(rows)
    if not len(rows) == len(cols) == len(values):
        raise InputError("inputs: rows, cols and values must have the same length")
    r = np.asarray(rows, np.int64) - 1
    c = np.asarray(cols, np.int64) - 1
    count = int(inputs["count"])
    if len(r) and (r.max() >= count or c.max() >= neurons):
        raise InputError(f"inputs: a triple lies outside {count} images x {neurons} pixels")
    return sp.csr_matrix((np.asarray(values, np.float64), (r, c)), shape=(count, neurons))


def handle_request(body: bytes, environ: Mapping[str, str] | None = None) -> Reply:
    """One inference request; never raises (every failure is a status and a JSON error)."""
    t0 = time.perf_counter()
    status, reply = _handle(body, function_env(environ))
    model = str(reply.get("model", "unknown"))
    observe.observe_request(
        "coordinator", model, str(reply.get("channel", "")), time.perf_counter() - t0
    )
    if status >= 400:
        observe.observe_error("coordinator", reply.get("error", "error").replace(" ", "_"))
    return status, reply


def _handle(body: bytes, env: dict[str, str]) -> Reply:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, "malformed JSON", str(exc))
    problem = _invalid(request)
    if problem:
        return _error(400, "invalid request", problem)
    name = request["model"]
    kind = request.get("channel", env.get("FSD_CHANNEL", "nats"))
    try:
        store = ModelStore(channel_config("s3", env=env))
        manifest = store.manifest(name)
        workers = int(request.get("workers") or _default_workers(manifest.partitions))
        partition = request.get("partition") or _default_partition(manifest.partitions, workers)
        if workers > manifest.neurons:
            return _error(
                400, "invalid request", f"workers: {workers} > {manifest.neurons} neurons"
            )
        ref = ModelRef(name, workers, partition)
        prepared = prepare_stored(store, ref, manifest)
        if "images" in request:
            if not manifest.images:
                return _error(404, "no stored images", f"model {name!r} was pushed without images")
            images = store.images(name, request["images"].get("first"))
        else:
            images = None
            matrix = _inline_images(request["inputs"], manifest.neurons)
        timeout = float(request.get("timeout", env.get("FSD_TIMEOUT", DEFAULT_TIMEOUT)))
        urls = tuple(u for u in env.get("FSD_WORKER_URL", "").split(",") if u)
        config = RunConfig(
            workers=workers,
            channel=kind,
            partition=partition,
            dtype=manifest.dtype,
            timeout=timeout,
            layer_timeout=min(timeout, float(env.get("FSD_LAYER_TIMEOUT", 60))),
            channel_config=channel_config(kind, env=env),
            launcher="openfaas",
            worker_urls=urls,
            gateway_user=env.get("FSD_GATEWAY_USER", "admin"),
            gateway_password=env.get("FSD_GATEWAY_PASSWORD", ""),
            fanout=int(env.get("FSD_FANOUT", DEFAULT_FANOUT)),
        )
        if not config.channel_config.address:
            return _error(503, "channel unreachable", f"no {kind} server configured")
        result = infer(prepared, images.matrix if images is not None else matrix, config)
    except ModelNotFound as exc:
        return _error(404, "unknown model", str(exc))
    except WorkerError as exc:
        timed_out = "timed out" in exc.detail
        return _error(
            504 if timed_out else 502,
            "worker timed out" if timed_out else "worker failed",
            str(exc),
            worker=exc.worker,
        )
    except ChannelError as exc:
        return _error(503, "channel unreachable", str(exc))
    except InputError as exc:
        return _error(400, "invalid request", str(exc))
    except FsdError as exc:
        return _error(500, "internal error", str(exc))
    out = result.to_json()
    out["model"] = name
    truth = images.truth.get(manifest.layers) if images is not None else None
    if truth is not None:
        out["correct"] = bool(np.array_equal(result.categories, truth))
        out["checked_against"] = "truth"
    observe.observe_run(result, name)
    return 200, out


def _default_workers(partitions: dict[str, dict[str, Any]]) -> int:
    if not partitions:
        raise InputError("the model has no partitions; push it with --workers")
    return min(int(p["workers"]) for p in partitions.values())


def _default_partition(partitions: dict[str, dict[str, Any]], workers: int) -> str:
    cut = sorted(p["partition"] for p in partitions.values() if int(p["workers"]) == workers)
    if not cut:
        raise InputError(f"workers: the model is not cut for {workers} workers")
    return "min-comm" if "min-comm" in cut else cut[0]
