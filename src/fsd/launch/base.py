"""The Launcher seam: starts workers somewhere (processes, FaaS functions) and watches them.

A platform is a :class:`Launcher` subclass that declares its own settings as a
:class:`LauncherOptions` dataclass (:attr:`Launcher.Options`): read once from the environment of
whatever launches workers (:meth:`LauncherOptions.from_env`), carried by the run's configuration,
and turned into a launcher by :meth:`Launcher.create`. Generic code never names a platform.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from fsd.channels.base import Billing, Rates
from fsd.task import WorkerTask

FUNCTION_USE = ("gb_seconds", "invocations")
"""What a run's functions use, as a platform's :attr:`Launcher.BILLING` names it: memory x
duration (GB-seconds, each function's duration billed by the millisecond) and invocations."""


@dataclass(frozen=True)
class LauncherOptions:
    """A platform's own settings (none here: a platform with some subclasses this).

    Frozen, so one parse serves a whole request; a secret field is ``field(repr=False)`` so no
    log or error shows it. The variables are those of the component that launches workers (a
    coordinator function, a worker invoking its children, the Lambda handlers).
    """

    VARIABLES: ClassVar[Mapping[str, str]] = {}
    """Every environment variable :meth:`from_env` reads -> what it says (for the docs)."""
    SECRETS: ClassVar[Mapping[str, str]] = {}
    """Secret file -> the variable it sets (gathered into :data:`fsd.variables.SECRET_VARS`):
    values a deployment mounts as secrets, never sets in plain, and no message repeats."""
    SECRETS_DIR: ClassVar[str] = ""
    """Where this platform mounts a function's secret files ("": it mounts none); the deployed
    platform's is the functions' ``FSD_SECRETS_DIR`` default (:data:`fsd.variables.SECRETS_DIR`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """The options from the launching component's environment (secret files already read
        into it); lenient: :meth:`Launcher.create` refuses what it cannot work with."""
        return cls()

    def to_env(self) -> dict[str, str]:
        """The variables a deployment sets for :meth:`from_env` to read these options back
        (those named in :attr:`SECRETS` go into secrets); an unset option is left out."""
        return {}

    def missing(self) -> str:
        """The variable that must be set before a worker can invoke workers (fan-out trees),
        or "" when nothing is missing."""
        return ""


class Launcher(ABC):
    """Starts one worker per task; the workers then talk only through their channel."""

    Options: ClassVar[type[LauncherOptions]] = LauncherOptions
    """This platform's settings (see :class:`LauncherOptions`)."""
    LOCAL: ClassVar[bool] = False
    """Workers are processes forked from the coordinator: they reach its loopback (an embedded
    server serves them), share its memory (a run may use a fresh secret of its own) and cannot
    be a function's workers. False: workers are elsewhere, and need the deployment's secret and
    a server they can reach."""
    BILLING: ClassVar[Billing] = {}
    """How this platform bills functions, if it publishes list prices: each of
    :data:`FUNCTION_USE` -> billed items. Every run's functions are priced as the first
    platform of the registry that declares one (:func:`fsd.cost.function_billing`), so runs on
    any platform compare in dollars."""
    PRICES: ClassVar[Rates] = {}
    """The list price of each item its :attr:`BILLING` names, USD per unit."""
    LOGGERS: ClassVar[tuple[str, ...]] = ()
    """Its client library's loggers: quieter than fsd's own in the CLI (their DEBUG prints
    request headers and retries)."""

    #: what each worker's platform answered when it finished (remote launchers fill it)
    replies: dict[int, dict[str, Any]]

    def __init__(self) -> None:
        self.replies = {}

    @classmethod
    @abstractmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        """A launcher from its platform's ``options`` (an instance of :attr:`Options`), the
        deployment ``secret`` it signs invocations with, the run's ``timeout`` (seconds) and
        ``fanout`` (above this many workers, workers invoke workers; 0: never)."""

    @abstractmethod
    def launch(self, tasks: Sequence[WorkerTask]) -> None:
        """Start every worker; returns once they are started, not finished."""

    @abstractmethod
    def failures(self) -> dict[int, str]:
        """Workers known to have died, with why (exit code, platform error)."""

    def progress(self) -> int:
        """The lowest layer every worker has finished, or -1 when the platform cannot tell."""
        return -1

    def worker_progress(self) -> dict[int, int]:
        """How many layers each worker has finished, where the platform can tell (empty where
        it cannot): a stalled worker is the one behind the others."""
        return {}

    @abstractmethod
    def close(self, grace: float = 5.0) -> None:
        """Stop whatever is still running after ``grace`` seconds in all and release
        resources. Idempotent."""

    def abort(self) -> None:
        """The run failed: stop the workers now, or wait (bounded) until they have stopped, so
        nothing they send lands after the coordinator's clean-up."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def children(worker: int, workers: int, fanout: int) -> list[int]:
    """The workers that ``worker`` invokes in a fan-out tree (BFS numbering, roots 0..F-1)."""
    if fanout <= 0:
        return []
    first = fanout * (worker + 1)
    return list(range(first, min(first + fanout, workers)))


class RemoteLauncher(Launcher):
    """Workers are function invocations, started as a fan-out tree above ``fanout`` workers.

    The tree is the platform's business only through :meth:`invoke`: the coordinator invokes
    workers 0..F-1 with ``fanout`` in their task, and each worker invokes its :func:`children`
    through a launcher of the same kind (:mod:`fsd.functions.worker`), which reports a child it
    could not start as that child's failure, over the channel.
    """

    fanout: int = 0

    def launch(self, tasks: Sequence[WorkerTask]) -> None:
        tree = 0 < self.fanout < len(tasks)
        for task in tasks[: self.fanout] if tree else tasks:
            payload = task.to_json()
            if tree:
                payload["fanout"] = self.fanout
            self.invoke(task.worker, payload)

    @abstractmethod
    def invoke(self, worker: int, payload: dict[str, Any]) -> None:
        """Start one invocation of the worker function for ``worker`` with the task
        ``payload`` (:meth:`WorkerTask.to_json`), signed; returns once it is sent."""
