"""The conformance suite every platform must pass unchanged: every entry of the registry
(:data:`fsd.launch.PLATFORMS`) runs it, on the stand tests/launch/platform_stands.py makes of it
(one per platform for this module), as tests/channels/test_channel_conformance.py runs every
transport.

Each check is a plain function of (platform name, stand), listed in :data:`CHECKS`, so that
tests/launch/test_registry.py runs the same checks on a platform it adds by one registry line.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fsd import auth, launch, variables
from fsd.coordinator import infer
from fsd.launch import PLATFORMS, Launcher, RemoteLauncher, make_launcher
from fsd.task import ModelRef, WorkerTask
from platform_stands import IMAGES, MODEL, PARTITION, SECRET, STANDS, TRUTH, WORKERS, Stand

BOUND = 60.0  # seconds: a generous bound that only catches a hang


def _tasks(stand: Stand, model: str = MODEL) -> list[WorkerTask]:
    """One run's tasks, without their shards: a remote worker fetches its own; a local one
    without it fails (the conformance net is the stand's ``prepared``, for runs)."""
    return [
        WorkerTask(
            uuid.uuid4().bytes,
            p,
            WORKERS,
            IMAGES.matrix.shape[0],
            None,
            stand.prepared.bias,
            stand.prepared.ymax,
            "float32",
            stand.channel,
            5.0,
            model=ModelRef(model, WORKERS, PARTITION),
            deadline=time.time() + 30,
        )
        for p in range(WORKERS)
    ]


def _failed(launcher: Launcher, worker: int) -> str:
    """Why ``worker`` failed, once ``launcher`` knows (within :data:`BOUND`)."""
    deadline = time.monotonic() + BOUND
    while worker not in (failed := launcher.failures()):
        assert time.monotonic() < deadline, f"worker {worker} not reported failed: {failed}"
        time.sleep(0.05)
    return failed[worker]


def runs_and_answers(kind: str, stand: Stand) -> None:
    """Workers launched on the platform run and answer: the categories are the reference's."""
    result = infer(stand.prepared, IMAGES.matrix, stand.config(kind))
    assert result.categories.tolist() == TRUTH.tolist()


def fan_out_tree(kind: str, stand: Stand) -> None:
    """Fanout 1: the coordinator invokes worker 0 only (remote platforms), which invokes the
    other on its own platform, through the registry; local processes are all started by the
    coordinator (they are not invocations)."""
    cls = launch.platform(kind)
    invoked: list[int] = []
    made: list[Launcher] = []
    create = cls.create

    def recording(options: Any, **how: Any) -> Launcher:
        launcher = create(options, **how)
        if not made and isinstance(launcher, RemoteLauncher):  # the coordinator's, made first
            send = launcher.invoke

            def invoke(worker: int, payload: dict[str, Any]) -> None:
                invoked.append(worker)
                send(worker, payload)

            launcher.invoke = invoke  # type: ignore[method-assign]
        made.append(launcher)
        return launcher

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, "create", recording)
        result = infer(stand.prepared, IMAGES.matrix, stand.config(kind, fanout=1))
    assert result.categories.tolist() == TRUTH.tolist()
    assert invoked == ([] if cls.LOCAL else [0])


def a_worker_that_dies_is_a_failure(kind: str, stand: Stand) -> None:
    """A worker that cannot run its task (a model the deployment does not serve; a local one
    without its shard) is reported by ``failures()``, with why."""
    with make_launcher(kind, stand.options, secret=SECRET, timeout=30) as launcher:
        launcher.launch(_tasks(stand, model="no-such-model")[:1])
        assert _failed(launcher, 0)


def a_worker_that_cannot_be_invoked_is_a_failure(kind: str, stand: Stand) -> None:
    """Nobody answers where the worker function should be: reported, not waited for. A local
    process is always started (its platform has no address to get wrong)."""
    if stand.unreachable is None:
        assert launch.platform(kind).LOCAL
        return
    with make_launcher(kind, stand.unreachable, secret=SECRET, timeout=30) as launcher:
        launcher.launch(_tasks(stand)[:1])
        assert _failed(launcher, 0)


def a_forged_invocation_is_refused(kind: str, stand: Stand) -> None:
    """Invocations signed with another secret are refused by the worker function, and the
    refusal is the worker's failure. Local workers are forks that take no invocation."""
    cls = launch.platform(kind)
    if cls.LOCAL:
        assert not issubclass(cls, RemoteLauncher)
        return
    with make_launcher(kind, stand.options, secret=auth.new_secret(), timeout=30) as launcher:
        launcher.launch(_tasks(stand)[:1])
        assert "signature does not verify" in _failed(launcher, 0)


def abort_and_close_are_idempotent(kind: str, stand: Stand) -> None:
    """Closing a launcher that launched nothing, or aborting and closing one twice after its
    worker failed (it could not be invoked, or died), returns at once every time."""
    t0 = time.monotonic()
    unused = make_launcher(kind, stand.options, secret=SECRET, timeout=30)
    unused.close()
    unused.close()
    options = stand.unreachable or stand.options
    launcher = make_launcher(kind, options, secret=SECRET, timeout=30)
    launcher.launch(_tasks(stand, model="no-such-model")[:1])
    _failed(launcher, 0)
    launcher.abort()
    launcher.abort()
    launcher.close()
    launcher.close()
    assert time.monotonic() - t0 < BOUND


def options_round_trip_and_hide_secrets(kind: str, stand: Stand) -> None:
    """The options a deployment sets (``to_env``) read back the same (``from_env``); a secret
    variable is one every function scrubs, and never shows in the options' repr."""
    options = stand.options
    assert isinstance(options, launch.platform(kind).Options)
    assert type(options).from_env(options.to_env()) == options
    marker = "MARKER-" + uuid.uuid4().hex
    for file, var in options.SECRETS.items():
        assert variables.SECRET_VARS.get(file) == var, f"{kind}: no secret file sets {var}"
        assert var in variables.SECRET_NAMES, f"{kind}: {var} is not scrubbed"
        shown = type(options).from_env({**options.to_env(), var: marker})
        assert marker not in repr(shown)
    assert set(options.to_env()) <= set(options.VARIABLES)


CHECKS: tuple[Callable[[str, Stand], None], ...] = (
    runs_and_answers,
    fan_out_tree,
    a_worker_that_dies_is_a_failure,
    a_worker_that_cannot_be_invoked_is_a_failure,
    a_forged_invocation_is_refused,
    abort_and_close_are_idempotent,
    options_round_trip_and_hide_secrets,
)


def test_every_platform_has_a_stand() -> None:
    """A platform added to the registry without saying how tests stand it up fails here."""
    missing = set(PLATFORMS) - set(STANDS)
    assert not missing, f"say how to stand up {missing} in tests/launch/platform_stands.py"


@pytest.fixture(scope="module", params=tuple(PLATFORMS))
def platform(request: pytest.FixtureRequest) -> Iterator[tuple[str, Stand]]:
    """Every platform in the registry, stood up once for this module."""
    kind = request.param
    if kind not in STANDS:
        pytest.fail(f"platform {kind!r} has no stand in tests/launch/platform_stands.py")
    with STANDS[kind](request) as stand:
        yield kind, stand


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_platform_conforms(
    platform: tuple[str, Stand], check: Callable[[str, Stand], None]
) -> None:
    check(*platform)
