"""A Kubernetes API for the operator tests: kmock's emulator plus what an API server maintains.

kmock (``kmock.KubernetesEmulator``) stores objects and serves list/watch/get/create/patch/delete,
but leaves ``metadata`` as the client sent it. kopf's patches carry a JSON-patch ``test`` of
``metadata.resourceVersion`` (optimistic concurrency), and the operator reports
``status.observedGeneration``, so this subclass does what a real API server does on every write:

- create: sets ``uid``, ``creationTimestamp``, ``generation: 1`` and a ``resourceVersion``;
- patch: a new ``resourceVersion``; ``generation + 1`` when ``spec`` changes (not for ``/status``);
- a JSON patch whose ``test`` fails gets 422 (kopf's cue to retry), not kmock's 500;
- writes are applied one at a time, and a watch sends what changed after the ``resourceVersion``
  it asks for, subscribing before it takes its snapshot (kmock's can miss a change in between).

It also runs the emulator and a kopf operator on background threads (:class:`Cluster`), so the
tests can drive the cluster from the main thread with the official ``kubernetes`` client.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import attrs
import jsonpatch
import kmock
import kopf
from kmock._internal import dicts  # the emulator's own patch logic, to see what a patch changes
from kmock._internal.rendering import Request

import waiting

GROUP = "fsd.dev"
VERSION = "v1alpha1"
PLURAL = "inferencemodels"
_WRITES = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)

wait_for = waiting.wait_for  # the one poller (tests/waiting.py), as the k8s tests import it


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersion, generation, uid and creationTimestamp kept."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)

    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    async def _handle(self, request: Request) -> Any:
        if request.resource is None or request.action not in _WRITES:
            return await super()._handle(request)
        # one write at a time, so resourceVersions are given in the order writes are applied
        async with self._writes:
            data = self._stamped(request) if request.data is not None else None
            if data is not None:
                stamped = attrs.evolve(request, data=data)
                # the reactions match requests from the handler's log: log the stamped one
                log = self._requests
                log[next(i for i, r in enumerate(log) if r is request)] = stamped
                request = stamped
            return await super()._handle(request)

    def _stamped(self, request: Request) -> Any:
        self._last_version = next(self._versions)
        rv = str(self._last_version)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            body = copy.deepcopy(request.data)
            meta = body.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
            meta.setdefault("creationTimestamp", now.isoformat().replace("+00:00", "Z"))
            meta["generation"] = 1
            meta["resourceVersion"] = rv
            return body
        if request.action != kmock.action.UPDATE or request.name is None:
            return None
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        current = self.objects[key].raw
        try:
            patched = dicts.patch_dict(current, request.data)
        except jsonpatch.JsonPatchTestFailed as exc:
            # the API server answers a failed "test" (a stale resourceVersion) with 422, which
            # kopf takes as "newer changes pending, retry on the next cycle" (kmock: 500)
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        except Exception:  # let the emulator answer other bad patches as it does
            return None
        meta = dict(current.get("metadata", {}))
        stamps: dict[str, Any] = {"resourceVersion": rv}
        if request.subresource is None and patched.get("spec") != current.get("spec"):
            stamps["generation"] = int(meta.get("generation", 1)) + 1
        if isinstance(request.data, list):
            ops = [{"op": "add", "path": f"/metadata/{k}", "value": v} for k, v in stamps.items()]
            return [*request.data, *ops]
        if isinstance(request.data, dict):
            merged = copy.deepcopy(request.data)
            merged.setdefault("metadata", {}).update(stamps)
            return merged
        return None

    async def _serve_list(self, request: Request) -> Any:
        """The emulator's list, with the collection's resourceVersion to watch from."""
        listed = cast(dict[str, Any], await super()._serve_list(request))
        listed["metadata"]["resourceVersion"] = str(self._last_version)
        return listed

    async def _serve_watch(self, request: Request) -> AsyncIterator[Any]:
        """Like the emulator's, but subscribed *before* the snapshot, and from ``resourceVersion``.

        The emulator sends the snapshot first and subscribes after the client has read it, so a
        change made in between (kopf patches as soon as it sees an object) was never streamed;
        and it sends the whole snapshot again to a client that listed first (kopf does) and asks
        to watch from the list's resourceVersion: stale copies the API server would not send.
        """
        yield b""  # send the headers: the stream is open
        assert request.resource is not None
        since = request.params.get("resourceVersion", "")
        after = int(since) if since.isdigit() else 0
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            snapshot = [
                obj.raw
                for (resource, namespace, name), obj in self.objects.items()
                if not obj.deleted
                and _selects(request, resource, namespace, name)
                and int(obj.raw.get("metadata", {}).get("resourceVersion", "0")) > after
            ]
        try:
            for raw in snapshot:
                yield {"type": "ADDED", "object": raw}
            async for event in marker:
                meta = event.get("object", {}).get("metadata", {})
                if _selects(request, request.resource, meta.get("namespace"), meta.get("name")):
                    yield event
        finally:
            await bus.unmark(marker)


def _selects(request: Request, resource: Any, namespace: str | None, name: str | None) -> bool:
    return bool(
        resource == request.resource
        and (request.namespace is None or namespace == request.namespace)
        and (request.name is None or name == request.name)
    )


def core_v1_discovery(api: Any) -> Any:
    """``GET /api/v1`` as client-go (Helm) wants it: kmock names the core group's version "/v1"."""

    async def core_v1(request: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {
                    "name": res.plural,
                    "singularName": info.singular or res.plural,
                    "kind": info.kind,
                    "namespaced": bool(info.namespaced),
                    "verbs": sorted(info.verbs),
                }
                for res in api.resources
                for info in [api.resources[res]]
                if res.group == "" and res.version == "v1"
            ],
        }

    return core_v1


def kubeconfig(url: str) -> str:
    """A kubeconfig (YAML is a superset of JSON) for the API at ``url``, no credentials."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
            "current-context": "kmock",
        }
    )


def declare(api: kmock.KubernetesEmulator, *, with_functions: bool = False) -> None:
    """The resources the operator needs discovered: its CRD, namespaces and events (kopf's)."""
    api.resources[f"{GROUP}/{VERSION}/{PLURAL}"] = kmock.ResourceInfo(
        kind="InferenceModel",
        singular="inferencemodel",
        namespaced=True,
        subresources={"status"},
        verbs={"list", "watch", "get", "create", "patch", "delete"},
    )
    api.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False, verbs={"list", "watch", "get"}
    )
    api.resources["v1/events"] = kmock.ResourceInfo(
        kind="Event", namespaced=True, verbs={"create", "list"}
    )
    if with_functions:
        api.resources["openfaas.com/v1/functions"] = kmock.ResourceInfo(
            kind="Function",
            singular="function",
            namespaced=True,
            verbs={"list", "watch", "get", "create", "patch", "delete"},
        )


class Cluster:
    """The API server and a kopf operator, each in its own event loop on a background thread.

    Two loops, because kopf, when it stops, waits up to 5 s for every task created after it
    started: in a shared loop, those include the API server's open watch connections.
    """

    def __init__(
        self,
        registry: kopf.OperatorRegistry,
        memo: kopf.Memo,
        *,
        with_functions: bool = False,
        prepare: Callable[[str, kopf.Memo], None] | None = None,
    ) -> None:
        self._registry = registry
        self._memo = memo
        self._with_functions = with_functions
        self._prepare = prepare
        self._stop = threading.Event()  # kopf's stop flag
        self._api_ready = threading.Event()
        self._api_loop: asyncio.AbstractEventLoop | None = None
        self._api_stop: asyncio.Event | None = None
        self._failed: list[BaseException] = []
        self.url = ""
        self.api: ApiServer | None = None
        self._api_thread = threading.Thread(target=self._run_api, name="kmock", daemon=True)
        self._thread = threading.Thread(target=self._run_operator, name="kopf", daemon=True)

    def _run_api(self) -> None:
        try:
            asyncio.run(self._serve_api())
        except BaseException as exc:  # reported by start()/stop()
            self._failed.append(exc)
        finally:
            self._api_ready.set()

    async def _serve_api(self) -> None:
        self._api_loop = asyncio.get_running_loop()
        self._api_stop = asyncio.Event()
        async with ApiServer() as api, kmock.Server(api):
            declare(api, with_functions=self._with_functions)
            self.api = api
            self.url = str(api.url).rstrip("/")
            self._api_ready.set()
            await self._api_stop.wait()

    def _run_operator(self) -> None:
        try:
            asyncio.run(self._operate())
        except BaseException as exc:
            self._failed.append(exc)

    async def _operate(self) -> None:
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True  # no CRD watching: the emulator serves no CRDs
        settings.posting.level = 100  # no k8s events: nothing here reads them
        settings.watching.reconnect_backoff = 0.1
        await kopf.operator(
            registry=self._registry,
            settings=settings,
            memo=self._memo,
            standalone=True,
            clusterwide=True,
            stop_flag=self._stop,
        )

    def start(self, timeout: float = 10.0, *, operator: bool = True) -> Cluster:
        """Start the API server, then (unless ``operator`` is False) the operator."""
        self._api_thread.start()
        if not self._api_ready.wait(timeout) or self._failed or not self.url:
            raise RuntimeError(f"the API server did not start: {self._failed}")
        self._memo["kube_url"] = self.url
        if self._prepare is not None:  # e.g. a config that needs the API's URL
            self._prepare(self.url, self._memo)
        if operator:
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """The operator is still running (a crash would have ended its thread)."""
        return self._thread.is_alive() and not self._failed

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._api_loop is not None and self._api_stop is not None:
            self._api_loop.call_soon_threadsafe(self._api_stop.set)
        self._api_thread.join(timeout)
        if self._thread.is_alive() or self._api_thread.is_alive():
            raise RuntimeError("the operator or the API server did not stop")
        if self._failed:
            raise RuntimeError(f"the operator failed: {self._failed[0]!r}") from self._failed[0]


def add_login(registry: kopf.OperatorRegistry) -> None:
    """kopf logs in to the URL the cluster put into the memo (instead of a kubeconfig)."""

    def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(memo["kube_url"]))

    kopf.on.login(registry=registry)(login)


@contextmanager
def running(registry: kopf.OperatorRegistry, memo: kopf.Memo, **kwargs: Any) -> Iterator[Cluster]:
    cluster = Cluster(registry, memo, **kwargs).start()
    try:
        yield cluster
    finally:
        cluster.stop()
