"""The worker's Lambda handler (``fsd.aws.worker.handler``): the event is the signed
invocation the Lambda launcher sent (:mod:`fsd.launch.lambda_`), checked and run exactly as the
OpenFaaS worker function does (:mod:`fsd.functions.worker`).

An asynchronous invocation has nobody to answer: a refusal or a failure is raised
(:class:`InvocationFailed`, its message scrubbed like any reply), so that Lambda counts it as a
function error and sends the ``OnFailure`` record to the coordinator's queue, where the
coordinator's launcher names this worker.
"""

from __future__ import annotations

import json
from typing import Any

from fsd.aws.settings import lambda_env
from fsd.errors import FsdError
from fsd.functions.worker import handle_request


class InvocationFailed(FsdError):
    """The worker refused its invocation or failed; the message is the function's reply."""


def handler(event: Any, context: Any) -> dict[str, Any]:
    env = lambda_env(context)
    try:
        body = json.dumps(event, allow_nan=False).encode()
    except (TypeError, ValueError):
        body = b"null"  # NaN or the like: not a signed invocation, refused as unsigned
    status, reply = handle_request(body, env)
    if status >= 400:
        worker = f"worker {reply['worker']}: " if "worker" in reply else ""
        raise InvocationFailed(f"{worker}{status} {reply['error']}: {reply['detail']}")
    return reply
