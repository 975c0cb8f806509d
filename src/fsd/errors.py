"""One error hierarchy, so the CLI and functions can map failures to exit codes and HTTP codes."""

from __future__ import annotations


class FsdError(Exception):
    """Base of every error fsd raises on purpose."""


class InputError(FsdError):
    """The user's input is wrong (bad arguments, files or data): CLI exit code 2, HTTP 400."""


class ModelFormatError(InputError):
    """A model or image file does not follow the Graph Challenge layout; names file and line."""

    def __init__(self, path: object, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class WireError(FsdError):
    """A received message is not a valid fsd wire frame (never trusted, never executed)."""


class ChannelError(FsdError):
    """The transport failed (unreachable, refused, closed)."""


class ChannelTimeout(ChannelError):
    """Expected messages did not arrive in time; names the endpoints still missing."""

    def __init__(self, message: str, missing: list[int]) -> None:
        super().__init__(message)
        self.missing = missing


class RunAborted(ChannelError):
    """The coordinator gave the run up (another worker failed, a timeout): stop, send nothing."""


class StoreError(FsdError):
    """The model store failed (unreachable, refused, a write or read that did not complete)."""


class ModelNotFound(FsdError):
    """The store has no such model (or object): HTTP 404 from a function."""


class WorkerError(FsdError):
    """A worker failed or died; names the worker."""

    def __init__(self, worker: int, detail: str, *, timed_out: bool = False) -> None:
        super().__init__(f"worker {worker} failed: {detail}")
        self.worker = worker
        self.detail = detail
        self.timed_out = timed_out  # it ran out of time (a 504 for a function), not crashed


class ServiceError(FsdError):
    """An embedded server (nats-server, SeaweedFS) could not be found, started or reached."""


class AuthError(FsdError):
    """Something received is not authentic (bad or missing MAC, expired, unknown key), or this
    component has no usable secret to check it with. Never says which byte was wrong."""
