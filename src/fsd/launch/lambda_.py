"""AWS Lambda launcher: each worker is one asynchronous ``Invoke`` of the worker function.

``InvocationType=Event`` (the Lambda API reference, ``Invoke``:
https://docs.aws.amazon.com/lambda/latest/dg/API_Invoke.html): Lambda queues the event and
answers 202 at once, so the coordinator never holds W connections for the length of a run (a
synchronous call would, and would bill the coordinator's GB-seconds while it waits). The same page
bounds the payload: "For asynchronous invocations, the maximum payload size is 1 MB" (it was
256 KB before 2025; the deprecated ``InvokeAsync`` still says 256 KB), so a task is measured
against :data:`ASYNC_PAYLOAD_LIMIT` before it is sent, and refused here rather than by Lambda.

Throttling (``TooManyRequestsException``, HTTP 429: the account's or the function's concurrency
is spent) is retried by botocore's ``standard`` retry mode, which lists that code among its
throttling errors and backs off exponentially with full jitter, up to 20 s a wait
(``botocore/retries/standard.py``): :data:`MAX_ATTEMPTS` attempts in all, then the worker is
reported failed with what Lambda said. Invocations are signed with the deployment secret
exactly like the OpenFaaS launcher's (:func:`fsd.auth.sign_invocation`).

An async invocation has no reply, so a worker that crashes (an exception, a timeout, its
process exiting) is learned from Lambda itself: the function's ``OnFailure`` destination sends
an invocation record (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html:
``requestContext.condition``, ``requestPayload`` = our signed event, ``responsePayload`` =
``errorType``/``errorMessage``) to an SQS queue; with ``failure_queue`` set, a thread long-polls
it and reports each record whose payload verifies with the deployment secret and names this run
(:meth:`LambdaLauncher.failures`). Records of other runs are left for their coordinators; forged
or expired ones are deleted.

The function (name or ARN), the queue and the endpoint come from the launching component's own
configuration (environment: ``FSD_WORKER_FUNCTION``, ``FSD_FAILURE_QUEUE_URL``, boto3's own
``AWS_ENDPOINT_URL_LAMBDA``/``AWS_ENDPOINT_URL``), never from a request.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fsd import settings
from fsd.auth import sign_invocation, verify_invocation
from fsd.errors import AuthError, FsdError, InputError
from fsd.launch.base import LauncherOptions, RemoteLauncher
from fsd.redact import redact_text
from fsd.task import WorkerTask

log = logging.getLogger(__name__)

ASYNC_PAYLOAD_LIMIT = 1024 * 1024
"""Lambda's largest asynchronous ``Invoke`` payload (1 MB, API_Invoke.html, see above)."""
MAX_ATTEMPTS = 5
"""Attempts per invocation under throttling (botocore standard mode: waits of up to 1, 2, 4, 8 s
with full jitter, about 15 s at most): long enough for a burst of W invokes to get through a
concurrency limit that is merely busy, short enough to fail a run well inside its timeout."""
INVOCATION_TTL = 180.0
"""How long a signed event stays valid: the retries above, Lambda's async queue (the template
keeps its maximum event age short) and clock skew."""
_MAX_DETAIL = 500
_MAX_RECORD = 2 * 1024 * 1024  # an invocation record: the 1 MB event plus the error
FUNCTION_NAME = re.compile(
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_\.]+)(:(\$LATEST(\.PUBLISHED)?|[a-zA-Z0-9-_]+))?"
)
"""``FunctionName``'s pattern in the Lambda API reference (API_Invoke.html)."""


@dataclass(frozen=True)
class LambdaOptions(LauncherOptions):
    """The worker function and where Lambda sends the records of its failed invocations (its
    endpoint and credentials are boto3's own: ``AWS_ENDPOINT_URL_LAMBDA``, the role's keys)."""

    function: str = ""
    failure_queue: str = ""

    VARIABLES: ClassVar[Mapping[str, str]] = {
        "FSD_WORKER_FUNCTION": "the worker function's name or ARN",
        "FSD_FAILURE_QUEUE_URL": "the SQS queue the worker function's OnFailure records go to "
        "(unset: a crashed worker is learned from its peers' timeout)",
    }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(
            function=settings.text(env, "FSD_WORKER_FUNCTION"),
            failure_queue=settings.text(env, "FSD_FAILURE_QUEUE_URL"),
        )

    def to_env(self) -> dict[str, str]:
        env = {"FSD_WORKER_FUNCTION": self.function, "FSD_FAILURE_QUEUE_URL": self.failure_queue}
        return {k: v for k, v in env.items() if v}

    def missing(self) -> str:
        return "" if self.function else "FSD_WORKER_FUNCTION"


class LambdaLauncher(RemoteLauncher):
    """Invokes the worker function asynchronously once per task (or per tree root)."""

    Options = LambdaOptions
    BILLING = {
        "gb_seconds": (("lambda_gb_second", 1.0),),
        "invocations": (("lambda_request", 1.0),),
    }
    # us-east-1 list prices, x86: $0.0000166667 per GB-second of duration (first 6 B GB-s/month
    # tier), $0.20 per million requests (invocations)
    PRICES = {"lambda_gb_second": 0.0000166667, "lambda_request": 0.20 / 1e6}
    LOGGERS = ("boto3", "botocore")

    def __init__(
        self,
        function: str,
        secret: bytes = b"",
        *,
        fanout: int = 0,
        failure_queue: str = "",
        max_attempts: int = MAX_ATTEMPTS,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if not secret:
            raise AuthError("no deployment secret to sign worker invocations with: set FSD_RUN_KEY")
        if not function:
            raise InputError("the lambda launcher needs the worker function (FSD_WORKER_FUNCTION)")
        if len(function) > 256 or not FUNCTION_NAME.fullmatch(function):
            raise InputError(
                f"FSD_WORKER_FUNCTION is not a Lambda function name or ARN: {function[:80]!r}"
            )
        self.fanout = fanout
        self._function = function
        self._secret = secret  # signs invocations; never sent
        config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=30,
        )
        self._lambda = boto3.client("lambda", config=config)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fsd-invoke")
        self._lock = threading.Lock()
        self._failed: dict[int, str] = {}
        self._run = ""
        self._workers = 0
        self._queue = failure_queue
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.attempts: dict[int, int] = {}
        """Invoke attempts per worker, as botocore counted them (retries included)."""

    @classmethod
    def create(
        cls, options: LauncherOptions, *, secret: bytes, timeout: float, fanout: int
    ) -> Self:
        """``timeout`` is not Lambda's business: an asynchronous invoke returns at once, and the
        function's own timeout bounds the worker."""
        assert isinstance(options, LambdaOptions)
        return cls(options.function, secret, fanout=fanout, failure_queue=options.failure_queue)

    def launch(self, tasks: Sequence[WorkerTask]) -> None:
        if tasks:
            self._run, self._workers = tasks[0].run.hex(), tasks[0].workers
        if self._queue and self._poller is None:
            self._poller = threading.Thread(
                target=self._poll, daemon=True, name="fsd-lambda-failures"
            )
            self._poller.start()
        super().launch(tasks)

    def invoke(self, worker: int, payload: dict[str, Any]) -> None:
        """Sign ``payload`` and send it (in a pool thread); refused here if Lambda would."""
        try:
            body = json.dumps(sign_invocation(self._secret, payload, INVOCATION_TTL)).encode()
        except (TypeError, ValueError) as exc:  # NaN or a non-JSON value: a bug upstream
            raise FsdError(f"worker {worker}: the task cannot be sent: {exc}") from None
        if len(body) > ASYNC_PAYLOAD_LIMIT:
            raise FsdError(
                f"worker {worker}: the invocation is {len(body)} bytes, over Lambda's "
                f"asynchronous limit of {ASYNC_PAYLOAD_LIMIT} bytes"
            )
        self._pool.submit(self._invoke, worker, body)

    def _invoke(self, worker: int, body: bytes) -> None:
        try:
            resp = self._lambda.invoke(
                FunctionName=self._function, InvocationType="Event", Payload=body
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            self.attempts[worker] = int(meta.get("RetryAttempts", 0)) + 1
            self._fail(
                worker,
                f"Invoke failed after {self.attempts[worker]} attempt(s): "
                f"{error.get('Code', 'error')}: {error.get('Message', '')}",
            )
            return
        except BotoCoreError as exc:
            self._fail(worker, f"Invoke failed: {type(exc).__name__}: {exc}")
            return
        self.attempts[worker] = int(resp["ResponseMetadata"].get("RetryAttempts", 0)) + 1
        if resp["StatusCode"] != 202:
            self._fail(worker, f"Invoke answered {resp['StatusCode']}, not 202 (queued)")

    def _poll(self) -> None:
        """Long-poll the OnFailure queue until closed (see the module's docstring)."""
        sqs = boto3.client("sqs", config=Config(retries={"mode": "standard"}))
        while not self._stop.is_set():
            try:
                got = sqs.receive_message(
                    QueueUrl=self._queue, MaxNumberOfMessages=10, WaitTimeSeconds=1
                )
            except (ClientError, BotoCoreError) as exc:
                log.warning("cannot read the failure queue: %s", redact_text(str(exc)))
                self._stop.wait(1.0)
                continue
            for message in got.get("Messages", []):
                verdict = self._record(message.get("Body", ""))
                try:
                    if verdict is None:  # another run's: leave it to its coordinator
                        sqs.change_message_visibility(
                            QueueUrl=self._queue,
                            ReceiptHandle=message["ReceiptHandle"],
                            VisibilityTimeout=5,
                        )
                    else:
                        sqs.delete_message(
                            QueueUrl=self._queue, ReceiptHandle=message["ReceiptHandle"]
                        )
                except (ClientError, BotoCoreError) as exc:
                    log.warning("cannot settle a failure record: %s", redact_text(str(exc)))

    def _record(self, body: str) -> bool | None:
        """Take one invocation record: True if it failed a worker of this run, False if it is
        garbage (forged, expired, malformed: deleted), None if it belongs to another run."""
        try:
            record = json.loads(body) if len(body) <= _MAX_RECORD else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return False
        try:
            task = verify_invocation(self._secret, record.get("requestPayload"))
        except AuthError as exc:
            log.warning("dropped a failure record: %s", exc)
            return False
        worker = task.get("worker")
        if task.get("run") != self._run:
            return None
        if isinstance(worker, bool) or not isinstance(worker, int):
            return False
        if not 0 <= worker < self._workers:
            return False
        context = record.get("requestContext")
        response = record.get("responsePayload")
        condition = context.get("condition") if isinstance(context, dict) else None
        why = "the invocation failed"
        if isinstance(response, dict) and response.get("errorType"):
            why = f"{response.get('errorType')}: {response.get('errorMessage', '')}"
        if condition:
            why = f"{why} ({condition})"
        self._fail(worker, f"Lambda reported {why}")
        return True

    def _fail(self, worker: int, why: str) -> None:
        why = redact_text(str(why))[:_MAX_DETAIL]
        log.warning("worker %d: %s", worker, why)
        with self._lock:
            self._failed.setdefault(worker, why)

    def failures(self) -> dict[int, str]:
        with self._lock:
            return dict(self._failed)

    def abort(self) -> None:
        """Async workers cannot be stopped from here: they were sent ABORT and end on it."""
        self.close(grace=0.0)

    def close(self, grace: float = 5.0) -> None:
        """Let the invokes still being sent finish (a throttled one may retry for about 15 s:
        :data:`MAX_ATTEMPTS`), or with ``grace`` 0 drop those not yet started; stop the poller
        within ``grace``."""
        deadline = time.monotonic() + grace
        self._pool.shutdown(wait=grace > 0, cancel_futures=grace <= 0)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=max(0.0, deadline - time.monotonic()))
