"""The Launcher seam: starts workers somewhere (processes, FaaS functions) and watches them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Self

from fsd.task import WorkerTask


class Launcher(ABC):
    """Starts one worker per task; the workers then talk only through their channel."""

    #: what each worker's platform answered when it finished (remote launchers fill it)
    replies: dict[int, dict[str, Any]]

    def __init__(self) -> None:
        self.replies = {}

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
    def close(self) -> None:
        """Stop whatever is still running and release resources. Idempotent."""

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

    @abstractmethod
    def close(self, grace: float = 5.0) -> None:
        """Wait up to ``grace`` seconds for what is in flight, then release resources."""
