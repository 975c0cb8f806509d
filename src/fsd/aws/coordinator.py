"""The coordinator's Lambda handler (``fsd.aws.coordinator.handler``): the OpenFaaS
coordinator's JSON API (:mod:`fsd.functions.coordinator`) behind a Lambda Function URL or an
API Gateway HTTP API.

The event is payload format 2.0 (https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html:
``requestContext.http.method``, ``body``, ``isBase64Encoded``); the answer is
``{statusCode, headers, body}`` with the JSON body as a string, which both front ends pass on
as is. Statuses and errors are the OpenFaaS coordinator's (docs/api.md); workers are invoked
with the Lambda launcher (``FSD_WORKER_FUNCTION``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from fsd.aws.settings import SecretsUnavailable, lambda_env
from fsd.functions.coordinator import handle_request
from fsd.functions.http import Reply, error

log = logging.getLogger(__name__)


def _answer(reply: Reply, **headers: str) -> dict[str, Any]:
    status, body = reply
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **headers},
        "body": json.dumps(body),
    }


def handler(event: Any, context: Any) -> dict[str, Any]:
    """POST runs an inference; GET answers a health check; other methods get 405."""
    if not isinstance(event, dict):
        return _answer(error(400, "invalid request", "the event is not a Function URL request"))
    context_ = event.get("requestContext")
    http = context_.get("http") if isinstance(context_, dict) else None
    method = http.get("method", "POST") if isinstance(http, dict) else "POST"
    if method == "GET":
        return _answer((200, {"status": "ok", "function": "coordinator"}))
    if method != "POST":
        reply = error(405, "method not allowed", f"{str(method)[:10]}: use POST")
        return _answer(reply, Allow="GET, POST")
    raw = event.get("body") or ""
    if not isinstance(raw, str):
        return _answer(error(400, "malformed JSON", "the body is not text"))
    try:
        body = (
            base64.b64decode(raw, validate=True) if event.get("isBase64Encoded") else raw.encode()
        )
    except (binascii.Error, ValueError):
        return _answer(error(400, "malformed JSON", "isBase64Encoded, but the body is not base64"))
    try:
        env = lambda_env(context)
    except SecretsUnavailable as exc:
        return _answer(error(503, "not configured", str(exc)))
    return _answer(handle_request(body, env))
