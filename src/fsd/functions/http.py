"""The python3-http contract shared by both functions' handlers, and their error replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fsd.redact import redact_text

Reply = tuple[int, dict[str, Any]]

MAX_DETAIL = 1000
"""Longest ``detail`` an error reply carries."""


def error(status: int, error: str, detail: str, **extra: Any) -> Reply:
    """A documented error reply: ``{"error", "detail"}`` plus any ``extra`` fields."""
    return status, {"error": error, "detail": detail, **extra}


def scrub(reply: Reply, secrets: Sequence[str]) -> Reply:
    """``reply`` with every URL's credentials and every one of ``secrets`` out of its error text.

    Applied to every error a function answers, whatever raised it: a message that quotes a
    configured URL or echoes a key never reaches the caller.
    """
    status, body = reply
    if status < 400:
        return reply
    clean = dict(body)
    for key in ("error", "detail"):
        text = redact_text(str(clean.get(key, "")))
        for secret in secrets:
            text = text.replace(secret, "***")
        if len(text) > MAX_DETAIL:
            text = text[: MAX_DETAIL - 3] + "..."
        clean[key] = text
    return status, clean


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
