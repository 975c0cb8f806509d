"""What stands in for AWS Lambda in tests: its ``Invoke`` API, and its Runtime API per invocation.

Nothing real runs Lambda functions here: moto's Lambda needs Docker to run code, and AWS is off
limits to tests. So this module plays the two sides of Lambda that fsd touches, following AWS's
documentation, and leaves the handlers to ``awslambdaric`` (the AWS Lambda runtime interface
client, the same loop the AWS Python base images run):

* the Invoke API boto3 calls (https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html):
  ``POST /2015-03-31/functions/{FunctionName}/invocations``; ``X-Amz-Invocation-Type: Event``
  answers 202 with an empty body once the event is queued, ``RequestResponse`` (the default)
  answers 200 with the function's response, plus ``X-Amz-Function-Error: Unhandled`` when it
  failed; an unknown function is 404 ``ResourceNotFoundException``; a payload over the limit is
  413 ``RequestEntityTooLargeException``; throttling (``throttle`` calls) is 429
  ``TooManyRequestsException`` (the error code in ``X-Amzn-ErrorType``, as botocore's rest-json
  parser reads it);
* the Runtime API (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html), one server
  per invocation: ``GET /2018-06-01/runtime/invocation/next`` hands out the event with the
  ``Lambda-Runtime-Aws-Request-Id``, ``-Deadline-Ms``, ``-Invoked-Function-Arn`` and
  ``-Trace-Id`` headers; ``POST .../invocation/{id}/response`` and ``.../{id}/error`` and
  ``.../init/error`` take the outcome (202). Each invocation is a fresh ``python -m
  awslambdaric <handler>`` process (a cold start every time: warm reuse is not modelled), ended
  once it has answered, as Lambda freezes an environment after ``/response``;
* the ``OnFailure`` destination of asynchronous invocations
  (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html): an event
  whose function errs or whose process dies is sent, as an invocation record (``version``,
  ``timestamp``, ``requestContext`` with ``condition`` ``RetriesExhausted``, ``requestPayload``,
  ``responseContext``, ``responsePayload``), to a real SQS queue (:class:`OnFailure`: the
  session's moto_server, locked, so the stand-in signs with its keys as Lambda signs with its
  role's).

``kill`` makes the process of the matching event die by SIGKILL as soon as it has taken its
event, which is how Lambda ends a function that runs out of memory (``Runtime.ExitError``).
What it cannot show: cold-start latency, concurrency limits and reserved concurrency (beyond
the ``throttle`` switch), IAM, Lambda's own retries of async events (fsd configures 0), the
maximum event age, and the async queue's delays.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3

from paths import ROOT

ASYNC_LIMIT = 1024 * 1024
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class Function:
    handler: str | None  # module.function run by awslambdaric; None: only record the events
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0


@dataclass(frozen=True)
class OnFailure:
    """The ``OnFailure`` destination: an SQS queue and the keys its (locked) server takes."""

    endpoint: str
    queue: str
    access_key: str
    secret_key: str = field(repr=False)


@dataclass
class Outcome:
    request_id: str
    event: Any
    response: Any = None
    error: dict[str, Any] | None = None
    exit_code: int | None = None


class _Invocation:
    """One event run by one awslambdaric process against its own Runtime API server."""

    def __init__(self, standin: LambdaStandIn, name: str, fn: Function, body: bytes) -> None:
        self.standin, self.name, self.fn, self.body = standin, name, fn, body
        self.outcome = Outcome(str(uuid.uuid4()), json.loads(body))
        self.answered = threading.Event()
        self.taken = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.name}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        inv = self

        class Runtime(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != "/2018-06-01/runtime/invocation/next":
                    self._reply(404)
                    return
                if inv.taken.is_set():  # the one event was handed out: frozen until ended
                    inv.answered.wait(inv.fn.timeout)
                    time.sleep(inv.fn.timeout)
                    return
                inv.taken.set()
                deadline = int((time.time() + inv.fn.timeout) * 1000)
                trace = f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"
                headers = {
                    "Lambda-Runtime-Aws-Request-Id": inv.outcome.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn": inv.arn(),
                    "Lambda-Runtime-Trace-Id": trace,
                    "Content-Type": "application/json",
                }
                self._reply(200, inv.body, **headers)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                prefix = f"/2018-06-01/runtime/invocation/{inv.outcome.request_id}/"
                if self.path == prefix + "response":
                    inv.outcome.response = json.loads(data or b"null")
                elif self.path in (prefix + "error", "/2018-06-01/runtime/init/error"):
                    inv.outcome.error = json.loads(data or b"{}")
                else:
                    self._reply(404)
                    return
                self._reply(202)
                inv.answered.set()

        return Runtime

    def run(self) -> None:
        env = {
            **self.fn.env,
            "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.server.server_port}",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
            "AWS_REGION": REGION,
        }
        log = (self.standin.logs / f"{self.name}-{self.outcome.request_id}.log").open("wb")
        assert self.fn.handler is not None
        proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", self.fn.handler],
            env=env,
            cwd=self.standin.logs,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        killer = self.standin.kill
        if killer is not None and killer(self.outcome.event):
            self.taken.wait(self.fn.timeout)
            proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + self.fn.timeout
        while not (done := self.answered.wait(0.05)) and time.monotonic() < deadline:
            if proc.poll() is not None or self.standin.closing.is_set():
                break  # died without answering, or the test is over
        ended = proc.poll()
        if done or ended is None:
            proc.kill()
        self.outcome.exit_code = proc.wait()
        log.close()
        self.server.shutdown()
        self.server.server_close()
        if self.outcome.error is None and self.outcome.response is None:
            why = "signal: killed" if ended == -signal.SIGKILL else f"exit status {ended}"
            if not done and ended is None:
                why = "Task timed out"
            self.outcome.error = {
                "errorType": "Runtime.ExitError",
                "errorMessage": f"RequestId: {self.outcome.request_id} Error: Runtime exited "
                f"with error: {why}",
            }
        self.standin.finished(self)


class LambdaStandIn:
    """The Invoke API on a loopback port, running registered functions (see the docstring)."""

    def __init__(self, logs: Path, on_failure: OnFailure | None = None) -> None:
        self.logs = logs
        self.functions: dict[str, Function] = {}
        self.on_failure = on_failure
        self.kill: Callable[[Any], bool] | None = None
        self.throttle = 0  # answer this many Invoke calls with 429
        self.calls: list[tuple[str, str, bytes]] = []  # (function, invocation type, payload)
        self.outcomes: list[Outcome] = []
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Invoke(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"Type": "User", "message": message}).encode()
                self.send_response(status)
                self.send_header("X-Amzn-ErrorType", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("?")[0].split("/")
                if len(parts) != 5 or parts[1:3] != ["2015-03-31", "functions"]:
                    self._error(404, "UnknownOperationException", "unknown operation")
                    return
                name = parts[3].split(":function:")[-1].split(":")[0]
                kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
                with standin._lock:
                    standin.calls.append((name, kind, data))
                    throttled = standin.throttle > 0
                    standin.throttle -= 1 if throttled else 0
                if throttled:
                    self._error(429, "TooManyRequestsException", "Rate Exceeded.")
                    return
                fn = standin.functions.get(name)
                if fn is None:
                    self._error(404, "ResourceNotFoundException", f"Function not found: {name}")
                    return
                if kind == "Event" and len(data) > ASYNC_LIMIT:
                    self._error(413, "RequestEntityTooLargeException", "Request too large")
                    return
                if fn.handler is None:
                    self.send_response(202 if kind == "Event" else 200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                inv = _Invocation(standin, name, fn, data)
                thread = threading.Thread(target=inv.run, daemon=True)
                thread.start()
                standin._threads.append(thread)
                if kind == "Event":
                    self.send_response(202)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                thread.join()
                out = inv.outcome
                body = json.dumps(out.error if out.error is not None else out.response).encode()
                self.send_response(200)
                if out.error is not None:
                    self.send_header("X-Amz-Function-Error", "Unhandled")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Invoke

    def finished(self, inv: _Invocation) -> None:
        with self._lock:
            self.outcomes.append(inv.outcome)
        if inv.outcome.error is None or self.on_failure is None:
            return
        to = self.on_failure
        now = datetime.datetime.now(datetime.UTC)
        record = {
            "version": "1.0",
            "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": inv.outcome.request_id,
                "functionArn": inv.arn() + ":$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 1,
            },
            "requestPayload": inv.outcome.event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": inv.outcome.error,
        }
        sqs = boto3.client(
            "sqs",
            endpoint_url=to.endpoint,
            region_name=REGION,
            aws_access_key_id=to.access_key,
            aws_secret_access_key=to.secret_key,
        )
        sqs.send_message(QueueUrl=to.queue, MessageBody=json.dumps(record))

    def close(self, wait: bool = True) -> None:
        """Stop serving; with ``wait`` let every invocation answer first, else kill them."""
        if not wait:
            self.closing.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.server.shutdown()
        self.server.server_close()


def environment(extra: dict[str, str]) -> dict[str, str]:
    """A function's environment: ``extra``, this checkout's sources, nothing of the test's."""
    src = ROOT / "src"
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(src), **extra}
