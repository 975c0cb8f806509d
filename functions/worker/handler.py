"""OpenFaaS handler of the worker function: thin over fsd.functions.worker."""

from __future__ import annotations

from typing import Any

from fsd.functions.http import serve
from fsd.functions.worker import handle_request


def handle(event: Any, context: Any) -> dict[str, Any]:
    return serve(event, handle_request, "worker")
