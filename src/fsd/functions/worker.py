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

import numpy as np

from fsd import observe, wire
from fsd.channels import COORDINATOR, Channel, ChannelConfig, open_channel
from fsd.channels.settings import channel_config
from fsd.errors import FsdError, InputError, WorkerError
from fsd.launch.openfaas import OpenFaaSLauncher, children
from fsd.settings import function_env
from fsd.store import ModelStore, ShardCache
from fsd.task import ModelRef, WorkerTask
from fsd.worker import run_worker

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
    subtree = _launch_children(request, task, env)
    try:
        store = ModelStore(channel_config("s3", env=env))
        t1 = time.perf_counter()
        shard, hit = CACHE.get(store, task.model, task.worker)
        load_seconds = time.perf_counter() - t1
        observe.observe_shard_load(model, hit, load_seconds)
        task.shard = shard
        with open_channel(task.channel, task.run, task.worker) as channel:

            def watch_children(layer: int) -> None:
                """A child that could not even start fails the run now, not a timeout later."""
                failed = subtree.failures() if subtree is not None else {}
                if failed:
                    child, why = min(failed.items())
                    _report(channel, task, child, why)
                    raise WorkerError(child, why)

            run_worker(task, channel, watch_children)
    except FsdError as exc:  # run_worker has told the coordinator when it could
        observe.observe_error("worker", type(exc).__name__)
        if subtree is not None:
            subtree.close(grace=0)
        return 500, {"error": "worker failed", "worker": task.worker, "detail": str(exc)}
    reply: dict[str, Any] = {}
    if subtree is not None:
        subtree.close(grace=task.layer_timeout)
        reply["children"] = list(subtree.replies.values())
        reply["child_failures"] = {str(k): v for k, v in subtree.failures().items()}
    seconds = time.perf_counter() - t0
    observe.observe_request("worker", model, task.channel.kind, seconds)
    return 200, {
        "worker": task.worker,
        "shard_cache": "hit" if hit else "miss",
        "shard_load_seconds": round(load_seconds, 6),
        "seconds": round(seconds, 6),
        **reply,
    }


def _launch_children(
    request: dict[str, Any], task: WorkerTask, env: dict[str, str]
) -> OpenFaaSLauncher | None:
    """In a fan-out tree, invoke this worker's children first (they carry the fanout on)."""
    fanout = int(request.get("fanout") or 0)
    kids = children(task.worker, task.workers, fanout)
    if not kids:
        return None
    urls = [u for u in env.get("FSD_WORKER_URL", "").split(",") if u]
    launcher = OpenFaaSLauncher(
        urls,
        timeout=float(env.get("FSD_TIMEOUT", 600)),
        user=env.get("FSD_GATEWAY_USER", "admin"),
        password=env.get("FSD_GATEWAY_PASSWORD", ""),
    )
    for child in kids:
        launcher.invoke(child, {**request, "worker": child})
    return launcher


def _report(channel: Channel, task: WorkerTask, child: int, why: str) -> None:
    """Tell the coordinator, on the child's behalf, that it failed (it never could)."""
    header = wire.Header(wire.Kind.RESULT, task.run, 0, child, COORDINATOR, flags=wire.FLAG_ERROR)
    detail = np.frombuffer(f"could not be invoked: {why}".encode(), np.uint8)
    channel.send(wire.Message(header, [detail]))
