"""The worker function: verify the invocation, check it, fetch the shard (or reuse it), run.

The body is a task signed with the deployment secret (:func:`fsd.auth.sign_invocation` of
:meth:`fsd.task.WorkerTask.to_json`, schema ``invocation.schema.json``). Nothing dangerous is
taken from it: the channel's address, credentials, namespace, bucket and region, the model
store and the secret are this function's own configuration (environment and mounted secrets),
and a body that names any of them is refused. In order, before any side effect (a child
invoked, a shard loaded, a connection opened):

1. this function's configuration: limits, served models, the secret (else 503 not configured);
2. the body parsed with limits (400 malformed JSON);
3. the signature and expiry (401 unsigned, 403 forged or expired; 409 replayed to this
   instance);
4. the task: schema, then bounds against this function's limits (400; 404 for a model it does
   not serve; 503 when the channel it names is not configured here).

Replies: 200 ``{"worker", "shard_cache", "shard_load_seconds", "resident", "layers_read",
"seconds"}`` (plus ``children`` and ``child_failures`` in a fan-out tree); errors ``{"error",
"detail"}`` (docs/api.md).

A warm instance keeps what fits the task's ``window`` (:meth:`fsd.store.ShardCache.load`): the
whole shard when the window holds every layer, else its first layers, all but the
:data:`fsd.store.STREAM_WINDOW` it streams the others through; the next invocation of the same
model, cut, worker and dtype downloads only those others.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fsd import auth, channels, observe, wire
from fsd.channels import COORDINATOR, Channel, open_channel
from fsd.errors import AuthError, FsdError, InputError, WorkerError
from fsd.functions.config import (
    Limits,
    ModelFilter,
    NotConfigured,
    Platform,
    Transports,
    deployment_secret,
    own_channels,
    platform,
    secret_values,
)
from fsd.functions.http import Reply, error, scrub
from fsd.functions.parse import load_json, problem
from fsd.launch import RemoteLauncher, children
from fsd.store import ModelStore, ShardCache, StoreConfig
from fsd.task import WorkerTask
from fsd.variables import function_env
from fsd.worker import run_worker

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).with_name("invocation.schema.json")  # docs/api/ links to it

#: what only this function's own configuration may say (a body naming one is refused): where
#: and how to connect, every transport's options included (from the registry)
OWN_SETTINGS = channels.own_settings()


@functools.cache
def _shard_cache(capacity: int) -> ShardCache:
    """The warm instance's shard cache (FSD_SHARD_CACHE shards), made on first use."""
    return ShardCache(capacity)


class _Seen:
    """MACs of invocations this instance accepted, until they expire: a replay is refused."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def first_time(self, mac: str, expires: int) -> bool:
        now = time.time()
        with self._lock:
            for old in [k for k, exp in self._items.items() if exp < now]:
                del self._items[old]
            if mac in self._items:
                return False
            self._items[mac] = expires
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
            return True


SEEN = _Seen()


@dataclasses.dataclass
class _Checked:
    """An invocation that passed every check, with what running it needs."""

    task: WorkerTask
    data: dict[str, Any]  # the verified task as sent (children get it with their own index)
    kids: list[int]
    limits: Limits
    store: StoreConfig  # the model store, this function's own
    platform: Platform  # how this function invokes workers (its children in a fan-out tree)


def handle_request(body: bytes, environ: Mapping[str, str] | None = None) -> Reply:
    """Run one worker to the end; never raises."""
    t0 = time.perf_counter()
    env = function_env(os.environ if environ is None else environ)
    status, reply = scrub(_handle(body, env, t0), secret_values(env))
    if status >= 400:
        observe.observe_error("worker", reply["error"].replace(" ", "_"))
    return status, reply


def _handle(body: bytes, env: dict[str, str], t0: float) -> Reply:
    try:
        checked = _check(body, env)
    except NotConfigured as exc:
        return error(503, "not configured", str(exc))
    except _Refused as exc:
        return exc.reply
    except InputError as exc:
        return error(400, "invalid request", str(exc))
    return _run(checked, env, t0)


class _Refused(Exception):
    def __init__(self, status: int, error_: str, detail: str) -> None:
        super().__init__(detail)
        self.reply = error(status, error_, detail)


def _check(body: bytes, env: dict[str, str]) -> _Checked:
    """Everything a worker checks before it does anything (see the module's docstring)."""
    limits = Limits.from_env(env)
    served = ModelFilter.from_env(env)
    transports = Transports.from_env(env)
    secret = deployment_secret(env)
    try:
        request = load_json(body)
    except InputError as exc:
        raise _Refused(400, "malformed JSON", str(exc)) from None
    if not isinstance(request, dict) or set(request) != {"task", "expires", "mac"}:
        raise _Refused(401, "unauthenticated", "the invocation is not signed (task, expires, mac)")
    try:
        data = auth.verify_invocation(secret, request)
    except AuthError as exc:
        raise _Refused(403, "forbidden", str(exc)) from None
    _refuse_own_settings(data)
    where = problem(SCHEMA_PATH, request)
    if where:
        raise InputError(where)
    worker, workers = data["worker"], data["workers"]
    if not worker < workers <= limits.max_workers:
        raise InputError(
            f"task/worker, task/workers: need 0 <= worker < workers <= {limits.max_workers} "
            f"(FSD_MAX_WORKERS), got worker {worker} of {workers}"
        )
    if data["model"]["workers"] != workers:
        raise InputError(f"task/model/workers: {data['model']['workers']} != workers {workers}")
    if data["images"] > limits.max_images:
        raise InputError(f"task/images: {data['images']} > {limits.max_images} (FSD_MAX_IMAGES)")
    if data["layer_timeout"] > limits.max_timeout:
        raise InputError(
            f"task/layer_timeout: {data['layer_timeout']:g} s > {limits.max_timeout:g} s "
            "(FSD_MAX_TIMEOUT)"
        )
    fanout = data.get("fanout", 0)
    if fanout > limits.fanout:
        raise InputError(f"task/fanout: {fanout} > {limits.fanout} (FSD_FANOUT)")
    name = data["model"]["name"]
    if not served.allows(name):
        raise _Refused(404, "unknown model", f"unknown model {name!r}")
    # signed by our coordinator, and still only among the transports this deployment runs
    kind = transports.choose(data["channel"]["kind"], "task/channel/kind")
    own, store = own_channels(kind, env)
    kids = children(worker, workers, fanout)
    invokes = platform(env)
    if kids and (unset := invokes.options.missing()):
        raise NotConfigured(f"a fan-out tree needs the worker function ({unset})")
    if not SEEN.first_time(request["mac"], request["expires"]):
        raise _Refused(409, "replayed invocation", "this invocation was already accepted here")
    return _Checked(WorkerTask.from_json(data, own), data, kids, limits, store, invokes)


def _refuse_own_settings(data: dict[str, Any]) -> None:
    """A body naming where to connect is refused by name (not just as an unknown field)."""
    channel = data.get("channel")
    named = [k for k in OWN_SETTINGS if k in data]
    if isinstance(channel, dict):
        named += [f"channel/{k}" for k in OWN_SETTINGS if k in channel]
    if named:
        raise InputError(
            f"task/{named[0]}: a worker takes its channel, credentials, namespace, bucket and "
            "region from its own configuration, never from an invocation"
        )


def _run(checked: _Checked, env: dict[str, str], t0: float) -> Reply:
    task = checked.task
    assert task.model is not None
    model = task.model.name
    try:
        subtree = _launch_children(checked)
    except FsdError as exc:  # this function's tree settings; the coordinator names this worker
        return error(503, "not configured", str(exc), worker=task.worker)
    try:
        store = ModelStore(checked.store)
        t1 = time.perf_counter()
        cache = _shard_cache(checked.limits.shard_cache)
        # the whole shard when the window holds it, else the first layers the window leaves
        # after the streamed ones, kept warm for the next invocation (fsd.store.split_window)
        loaded = cache.load(store, task.model, task.worker, task.dtype, task.window)
        task.shard, task.layers, task.window = loaded.shard, loaded.layers, loaded.window
        hit = loaded.hit
        load_seconds = time.perf_counter() - t1
        observe.observe_shard_load(model, hit, load_seconds)
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
        log.warning("worker %d of run %s failed: %s", task.worker, task.run.hex(), exc)
        if subtree is not None:
            subtree.close(grace=0)
        return error(500, "worker failed", str(exc), worker=task.worker)
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
        "resident": loaded.resident,
        "layers_read": loaded.reads,
        "seconds": round(seconds, 6),
        **reply,
    }


def _launch_children(checked: _Checked) -> RemoteLauncher | None:
    """In a fan-out tree, invoke this worker's children first (they carry the fanout on),
    each with an invocation this worker signs, on this function's own platform."""
    if not checked.kids:
        return None
    launcher = checked.platform.launcher(
        secret=checked.task.channel.secret, timeout=checked.limits.max_timeout
    )
    if not isinstance(launcher, RemoteLauncher):  # config.platform refuses local ones
        raise NotConfigured(f"{checked.platform.kind} workers cannot invoke workers")
    for child in checked.kids:
        launcher.invoke(child, {**checked.data, "worker": child})
    return launcher


def _report(channel: Channel, task: WorkerTask, child: int, why: str) -> None:
    """Tell the coordinator, on the child's behalf, that it failed (it never could)."""
    header = wire.Header(wire.Kind.RESULT, task.run, 0, child, COORDINATOR, flags=wire.FLAG_ERROR)
    detail = np.frombuffer(f"could not be invoked: {why}".encode(), np.uint8)
    channel.send(wire.Message(header, [detail]))
