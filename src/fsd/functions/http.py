"""The python3-http contract shared by both functions' handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reply = tuple[int, dict[str, Any]]


def serve(event: Any, handle_request: Callable[[bytes], Reply], name: str) -> dict[str, Any]:
    """POST runs ``handle_request``; GET answers a health check; other methods get 405."""
    if event.method == "GET":
        return {"statusCode": 200, "body": {"status": "ok", "function": name}}
    if event.method != "POST":
        return {
            "statusCode": 405,
            "body": {"error": "method not allowed", "detail": f"{event.method}: use POST"},
            "headers": {"Allow": "GET, POST"},
        }
    status, reply = handle_request(event.body)
    return {"statusCode": status, "body": reply}
