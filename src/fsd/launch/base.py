"""The Launcher seam: starts workers somewhere (processes, FaaS functions) and watches them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

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

    @abstractmethod
    def close(self) -> None:
        """Stop whatever is still running and release resources. Idempotent."""

    def abort(self) -> None:
        """The run failed: stop the workers now, or wait (bounded) until they have stopped, so
        nothing they send lands after the coordinator's clean-up."""
        self.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
