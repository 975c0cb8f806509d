"""The worker function: fetch this worker's shard (or reuse it while warm), run the layer loop.

The invocation body is :meth:`fsd.worker.WorkerTask.to_json`: it names the model, not its
weights, and carries no secrets; connection settings and secrets come from the function's own
environment and mounted secrets. The reply says whether the shard came from the warm cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from fsd import observe
from fsd.channels import ChannelConfig, open_channel
from fsd.channels.settings import channel_config
from fsd.errors import FsdError, InputError
from fsd.functions.secrets import function_env
from fsd.store import ModelRef, ModelStore, ShardCache
from fsd.worker import WorkerTask, run_worker

log = logging.getLogger(__name__)

CACHE = ShardCache(int(os.environ.get("FSD_SHARD_CACHE", "4")))

Reply = tuple[int, dict[str, Any]]


def _task(request: dict[str, Any], env: dict[str, str]) -> WorkerTask:
    try:
        ch = request["channel"]
        kind = str(ch["kind"])
        if kind not in ("nats", "s3"):
            raise InputError(f"unknown channel {kind!r}")
        # this function's own settings (with its secrets) win; the request's address is a fallback
        base = ChannelConfig(bucket=str(ch.get("bucket", "fsd")))
        cfg = channel_config(kind, env=env, base=base)
        if not cfg.address:
            cfg = dataclasses.replace(cfg, address=str(ch["address"]))
        cfg = dataclasses.replace(
            cfg,
            max_frame=int(ch.get("max_frame", cfg.max_frame)),
            compress=bool(ch.get("compress", True)),
            namespace=str(ch.get("namespace", cfg.namespace)),
        )
        model = request["model"]
        return WorkerTask(
            run=bytes.fromhex(request["run"]),
            worker=int(request["worker"]),
            workers=int(request["workers"]),
            images=int(request["images"]),
            shard=None,
            bias=float(request["bias"]),
            ymax=float(request["ymax"]),
            dtype=str(request["dtype"]),
            channel=cfg,
            layer_timeout=float(request.get("layer_timeout", 60.0)),
            model=ModelRef(str(model["name"]), int(model["workers"]), str(model["partition"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"invalid worker invocation: {type(exc).__name__}: {exc}") from None


def handle_request(body: bytes, environ: Mapping[str, str] | None = None) -> Reply:
    """Run one worker to the end; never raises."""
    t0 = time.perf_counter()
    env = function_env(environ)
    try:
        request = json.loads(body)
        if not isinstance(request, dict):
            raise InputError("the invocation body must be a JSON object")
        task = _task(request, env)
    except (UnicodeDecodeError, json.JSONDecodeError, InputError) as exc:
        observe.observe_error("worker", "bad_request")
        return 400, {"error": "invalid request", "detail": str(exc)}
    assert task.model is not None
    model = task.model.name
    try:
        store = ModelStore(channel_config("s3", env=env))
        t1 = time.perf_counter()
        shard, hit = CACHE.get(store, task.model, task.worker)
        load_seconds = time.perf_counter() - t1
        observe.observe_shard_load(model, hit, load_seconds)
        task.shard = shard
        with open_channel(task.channel, task.run, task.worker) as channel:
            run_worker(task, channel)
    except FsdError as exc:  # run_worker has told the coordinator when it could
        observe.observe_error("worker", type(exc).__name__)
        return 500, {"error": "worker failed", "worker": task.worker, "detail": str(exc)}
    seconds = time.perf_counter() - t0
    observe.observe_request("worker", model, task.channel.kind, seconds)
    return 200, {
        "worker": task.worker,
        "shard_cache": "hit" if hit else "miss",
        "shard_load_seconds": round(load_seconds, 6),
        "seconds": round(seconds, 6),
    }
