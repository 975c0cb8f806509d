"""A client of a deployed coordinator function: one inference request to the coordinator's URL.

Where that URL is and how to log in is the platform's: its client module in :data:`PLATFORMS`
makes ``fsd invoke``'s flags (:meth:`Client.add_arguments`) and, from them, the :class:`Target`
(:meth:`Client.target`). The request is checked here exactly as the coordinator checks it (strict
JSON, its schema) before anything is sent, and the answer is checked to be a run result before it
is shown. Nothing here prints: :mod:`fsd.cli` does, with the same code as a local run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3

from fsd import settings
from fsd.bounded import read_within
from fsd.errors import FsdError, InputError
from fsd.functions.coordinator import BULK, SCHEMA_PATH
from fsd.functions.parse import load_json, problem
from fsd.k8s import names
from fsd.redact import redact_text
from fsd.settings import Variable

PLATFORMS: Mapping[str, str] = {
    "openfaas": "fsd.invoke_openfaas",
}
"""Platform -> the module of its :class:`Client`; ``fsd invoke`` goes through the first."""
#: Largest request sent: the coordinator's default FSD_MAX_BODY_BYTES (docs/api.md).
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Largest answer read (100 000 categories and 32 768 layers fit many times over).
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Seconds to connect to the coordinator's URL, and added to the inference's bound for the
#: platform's front door, a cold start and the answer's way back.
CONNECT_SECONDS = 10.0
MARGIN_SECONDS = 30.0
#: Seconds an answer is waited for when the request sets no ``timeout``: the coordinator's
#: default FSD_MAX_TIMEOUT (docs/api.md), which bounds whatever its own default is.
DEFAULT_WAIT_SECONDS = settings.MAX_TIMEOUT


class InvokeError(FsdError):
    """The coordinator could not be reached, or failed (not the request's fault)."""


@dataclass(frozen=True)
class Target:
    """One coordinator as its platform's client found it: the URL a request is posted to, how
    messages name it, the headers to send (its credentials: out of ``repr``), the one secret no
    message may show, and what a refusal (401, 403) should add to its message."""

    url: str
    where: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret: str = field(default="", repr=False)
    refused: str = ""


class Client(Protocol):
    """A platform's ``fsd invoke`` (a module of :data:`PLATFORMS`)."""

    EPILOG: str
    """The command's examples and notes for ``--help``."""
    VARIABLES: tuple[Variable, ...]
    """The variables it reads (docs/configuration.md; the secrets' values are scrubbed)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The flags that say where the platform is and how to log in."""

    def target(self, args: argparse.Namespace, env: Mapping[str, str]) -> Target:
        """The coordinator ``args`` name (``--function`` or ``--inference-model``), checked;
        one-line ``InputError`` for a bad flag or variable."""


def client() -> Client:
    """The client ``fsd invoke`` uses: the first of :data:`PLATFORMS`."""
    module: Client = importlib.import_module(next(iter(PLATFORMS.values())))  # type: ignore[assignment]
    return module


def clients() -> tuple[Client, ...]:
    """Every platform's client (:data:`PLATFORMS`)."""
    return tuple(importlib.import_module(m) for m in PLATFORMS.values())  # type: ignore[misc]


def variables() -> tuple[Variable, ...]:
    """What the clients read, each once."""
    found: dict[str, Variable] = {}
    for each in clients():
        for var in each.VARIABLES:
            found.setdefault(var.name, var)
    return tuple(found.values())


def request_choices(name: str) -> tuple[str, ...]:
    """The values the coordinator's request schema allows for ``name`` (``channel``, ...)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    return tuple(schema["properties"][name]["enum"])


def coordinator_function(name: str, namespace: str) -> str:
    """The coordinator function of InferenceModel ``namespace/name`` (the naming contract:
    ``<name>-<namespace>-coordinator``, made by :func:`fsd.k8s.names.function_name`)."""
    return names.function_name(name, namespace, "coordinator")


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of ``path`` (``-``: standard input), or a one-line InputError."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with path.open("rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{what} is larger than {limit} bytes")
    return data


def read_request(path: Path) -> dict[str, Any]:
    """A request file (``-``: standard input) as strict JSON, an object within the size limit."""
    where = "standard input" if str(path) == "-" else str(path)
    body = read_bounded(path, MAX_REQUEST_BYTES, f"the request {where}")
    try:
        value = load_json(body)
    except InputError as exc:
        raise InputError(f"the request {where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InputError(f"the request {where} is not a JSON object")
    return value


def check_request(request: Mapping[str, Any]) -> bytes:
    """The request as the body to send, once it passes the coordinator's own schema."""
    found = problem(SCHEMA_PATH, request, bulk=BULK)
    if found:
        raise InputError(f"invalid request: {found}")
    body = json.dumps(request, separators=(",", ":")).encode()
    if len(body) > MAX_REQUEST_BYTES:
        raise InputError(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    return body


def wait_seconds(request: Mapping[str, Any]) -> float:
    """How long to wait for the answer: the request's own bound (or the coordinator's largest
    default) plus a margin; always finite."""
    asked = request.get("timeout")
    bound = float(asked) if isinstance(asked, int | float) else DEFAULT_WAIT_SECONDS
    return bound + MARGIN_SECONDS


def invoke(target: Target, body: bytes, wait: float) -> dict[str, Any]:
    """POST ``body`` to the coordinator; the answer when it is a run result, else an error:
    InputError for what the caller can fix (4xx), InvokeError for the rest."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(target.headers)
    http = urllib3.PoolManager(retries=urllib3.Retry(total=0, redirect=0))
    where = target.where
    deadline = time.monotonic() + CONNECT_SECONDS + wait
    try:
        response = http.request(
            "POST",
            target.url,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=CONNECT_SECONDS, read=wait),
            preload_content=False,
            redirect=False,
        )
        try:
            data = read_within(response, MAX_REPLY_BYTES, deadline)
        finally:
            response.release_conn()
    except (urllib3.exceptions.TimeoutError, TimeoutError):
        raise InvokeError(f"no answer from {where} within {wait:g} s") from None
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InvokeError(f"cannot reach {where}: {_scrub(str(reason), target.secret)}") from None
    finally:
        http.clear()
    if len(data) > MAX_REPLY_BYTES:
        raise InvokeError(f"{where} answered more than {MAX_REPLY_BYTES} bytes")
    if response.status != 200:
        raise _failure(response.status, data, target)
    return check_result(_json(data, where), where)


class _NotFinite(ValueError):
    """A JSON number that overflows a float (``1e400``): not one ``--json`` could print back."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _json(data: bytes, where: str) -> Any:
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, parse_constant=constant, parse_float=_finite_float)
    except _NotFinite:
        raise InvokeError(f"{where} answered 200 with a non-finite number") from None
    except (ValueError, RecursionError):
        raise InvokeError(f"{where} answered 200 with a body that is not JSON") from None


def _failure(status: int, data: bytes, target: Target) -> FsdError:
    """One line for an error answer: the coordinator's ``error: detail`` (docs/api.md), or the
    start of the platform's own text (its 401, 404 and 5xx may be plain text)."""
    detail = ""
    try:
        reply = json.loads(data[:65536])
        if isinstance(reply, dict) and isinstance(reply.get("error"), str):
            detail = str(reply["error"])
            if isinstance(reply.get("detail"), str):
                detail += f": {reply['detail']}"
    except (ValueError, RecursionError):
        pass
    if not detail:
        detail = data[:300].decode("utf-8", "replace").strip() or "(no body)"
    message = f"{target.where} answered {status}: {_scrub(detail[:600], target.secret)}"
    if status in (401, 403):
        return InputError(f"{message} ({target.refused})" if target.refused else message)
    if 400 <= status < 500:  # bad request, unknown function or model, too large: fix the input
        return InputError(message)
    return InvokeError(message)


def _scrub(text: str, secret: str) -> str:
    """``text`` without URL userinfo and without this client's own secret."""
    text = redact_text(text)
    return text.replace(secret, "***") if secret else text


#: A run result's fields the summary shows, with their JSON types (metrics.summary): numbers
#: are finite and at least 0 (``comm_share`` a share, at most 1), strings short; the CLI makes
#: each string one printable line before showing it.
_NUMBER = (int, float)
MAX_RESULT_TEXT = 64
_HIGHEST = {"comm_share": 1.0}
RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "categories": (list,),
    "n_categories": (int,),
    "images": (int,),
    "seconds": _NUMBER,
    "load_seconds": _NUMBER,
    "plan_seconds": _NUMBER,
    "edges_per_second": _NUMBER,
    "workers": (int,),
    "partition": (str,),
    "dtype": (str,),
    "channel": (str,),
    "bytes_sent": (int,),
    "messages": (int,),
    "comm_share": _NUMBER,
}


def check_result(reply: Any, where: str) -> dict[str, Any]:
    """``reply`` when it has every field of a run result with its type and bounds, else
    InvokeError."""
    if not isinstance(reply, dict):
        raise InvokeError(f"{where} answered 200 with something that is not a run result")
    for key, kinds in RESULT_FIELDS.items():
        value = reply.get(key)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise InvokeError(f"{where} answered 200 without a valid {key!r}: not a run result")
        if isinstance(value, int | float) and not _within(value, _HIGHEST.get(key, math.inf)):
            raise InvokeError(f"{where} answered 200 without a valid {key!r}: {_shown(value)}")
        if isinstance(value, str) and len(value) > MAX_RESULT_TEXT:
            raise InvokeError(
                f"{where} answered 200 without a valid {key!r}: over {MAX_RESULT_TEXT} characters"
            )
    if reply.get("correct") not in (True, False, None):
        raise InvokeError(f"{where} answered 200 without a valid 'correct'")
    against = reply.get("checked_against")
    if not (against is None or (isinstance(against, str) and len(against) <= MAX_RESULT_TEXT)):
        raise InvokeError(f"{where} answered 200 without a valid 'checked_against'")
    cost = reply.get("cost_usd")
    if cost is not None and not (
        isinstance(cost, dict)
        and isinstance(cost.get("total_usd"), _NUMBER)
        and not isinstance(cost.get("total_usd"), bool)
        and _within(cost["total_usd"], math.inf)
    ):
        raise InvokeError(f"{where} answered 200 without a valid 'cost_usd'")
    return reply


def _within(value: float, high: float) -> bool:
    """``0 <= value <= high`` and finite, also for an int too large for a float (which the
    summary's arithmetic would overflow on)."""
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and 0.0 <= number <= high


def _shown(value: float) -> str:
    """A number for a message: not the hundreds of digits of a huge int."""
    try:
        return f"{float(value):g}"
    except OverflowError:
        return "an integer beyond any float"
