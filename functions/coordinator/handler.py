"""OpenFaaS handler of the coordinator function: thin over fsd.functions.coordinator."""

from __future__ import annotations

from typing import Any

from fsd.functions.coordinator import handle_request
from fsd.functions.http import serve


def handle(event: Any, context: Any) -> dict[str, Any]:
    return serve(event, handle_request, "coordinator")
