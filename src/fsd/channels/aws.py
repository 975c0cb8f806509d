"""What the AWS transports (``sqs``, ``sns``) share: their settings (boto3's own endpoint
variables and credential chain; :mod:`fsd.embedded.aws` starts a ``moto_server`` when neither
names AWS), a boto3
client from a ChannelConfig, retrying transport failures and throttling (not refusals) within
``retry_seconds``, and reaping what runs that ended without cleaning up left behind.

Reaping: a run's queues are named ``<prefix>-<run hex>-<who>``, and the queue its coordinator
makes when it opens (``-c`` for sqs, the ``-live`` marker for sns) carries two tags: who owns
the run (:func:`fsd.lifetime.owner_stamp`: boot id, pid namespace, pid and start time) and when
it expires (``ttl_seconds`` on). A run is abandoned when its owner ran on this machine and has
ended (a SIGKILLed ``fsd run``), or, owned elsewhere, once it expired; a run whose coordinator
queue is gone (or untagged) once its oldest queue is older than ``ttl_seconds``. Each new
coordinator deletes the queues of abandoned runs (:func:`reap_runs`), at most every
:data:`REAP_EVERY` seconds per process: never a live run's, whatever machine it runs on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from fsd import lifetime, settings
from fsd.channels.base import Channel, ChannelConfig, Slot, TransportOptions, options
from fsd.errors import ChannelError
from fsd.settings import Variable
from fsd.urls import check_endpoint

log = logging.getLogger(__name__)

T = TypeVar("T")

LONG_POLL = 20  # SQS's maximum WaitTimeSeconds
MAX_BATCH = 10  # SQS: messages per receive and per send, delete or visibility batch
MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
REFUSED = (
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidSecurity",
)


#: What tells boto3 where credentials are, besides instance metadata (which a laptop lacks
#: and asking for costs seconds): https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html
AWS_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


def aws_credentials_configured(env: Mapping[str, str]) -> bool:
    """Whether boto3 would find AWS credentials without asking instance metadata."""
    if any(env.get(name) for name in AWS_CREDENTIAL_VARS):
        return True
    home = env.get("HOME") or os.path.expanduser("~")  # boto3 reads it from the process
    files = (
        env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
        env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"),
    )
    return any(os.path.isfile(f) for f in files)


def aws_endpoint_setting(service: str, env: Mapping[str, str]) -> tuple[str, str]:
    """``(variable, endpoint)`` of ``service`` (``sqs``, ``sns``) as the AWS SDKs read them
    (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html); ``("", "")``:
    AWS's own endpoints."""
    if settings.aws_endpoints_ignored(env):
        return "", ""
    for name in (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL"):
        value = settings.text(env, name)
        if value:
            return name, value
    return "", ""


AWS_ENDPOINT_HELP = (
    "the endpoint of {service} as the AWS SDKs read it (else AWS_ENDPOINT_URL; off with "
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true); absent: AWS itself when credentials are "
    "configured, else fsd run starts an embedded moto_server"
)


@dataclass(frozen=True)
class AwsOptions(TransportOptions):
    """The region, keys (empty: boto3's own chain) and, for sns, where its queues are; and
    whether the environment names AWS credentials (then AWS itself is the server)."""

    region: str = settings.REGION
    access_key: str = field(default="", repr=False)  # an embedded server's; else boto3's chain
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    queue_address: str = ""  # sns: the SQS endpoint when not the config's address (SNS's)
    credentials: bool = False  # AWS credentials are configured (environment, shared files)

    VARIABLES = (
        Variable("AWS_ENDPOINT_URL_SQS", AWS_ENDPOINT_HELP.format(service="SQS")),
        Variable("AWS_ENDPOINT_URL_SNS", AWS_ENDPOINT_HELP.format(service="SNS")),
        Variable("AWS_ENDPOINT_URL", "the endpoint of every AWS service without its own"),
        Variable(
            "FSD_AWS_PREFIX",
            "the deployment's prefix for queue and topic names; credentials come from boto3's "
            "own chain (environment, shared files, the function's role)",
            default=settings.PREFIX,
        ),
        Variable(
            "AWS_REGION",
            "the region (else AWS_DEFAULT_REGION, as the AWS SDKs read it)",
            default=settings.REGION,
        ),
        *(
            Variable(name, "a source of AWS credentials: set, AWS itself is the server")
            for name in AWS_CREDENTIAL_VARS[1:]  # the keys: S3's (fsd.s3client)
        ),
        Variable(
            "AWS_SHARED_CREDENTIALS_FILE",
            "boto3's credentials file: present, AWS itself is the server",
            default="~/.aws/credentials",
        ),
        Variable(
            "AWS_CONFIG_FILE",
            "boto3's config file: present, AWS itself is the server",
            default="~/.aws/config",
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str], kind: str) -> tuple[str, str, AwsOptions]:
        """``(address, namespace, options)`` of ``kind`` (``sqs``, ``sns``), every endpoint
        checked."""
        source, endpoint = aws_endpoint_setting(kind, env)
        queue_source, queue_endpoint = aws_endpoint_setting("sqs", env)
        for name, url in ((source, endpoint), (queue_source, queue_endpoint)):
            if url:
                check_endpoint(url, name)  # the same URL rules: http(s), a host, no credentials
        region = settings.aws_region(env)
        if kind == "sns" and endpoint and not queue_endpoint:  # SNS elsewhere, SQS AWS's own
            queue_endpoint = f"https://sqs.{region}.amazonaws.com"
        queues = queue_endpoint if kind == "sns" and queue_endpoint != endpoint else ""
        return (
            endpoint,
            settings.text(env, "FSD_AWS_PREFIX"),
            cls(region=region, queue_address=queues, credentials=aws_credentials_configured(env)),
        )


def aws_settings(config: ChannelConfig, env: Mapping[str, str], kind: str) -> ChannelConfig:
    """``sqs``/``sns`` settings: the endpoints, ``FSD_AWS_PREFIX`` and the region; keys stay
    with boto3's own chain (environment, shared files, the function's role)."""
    address, prefix, own = AwsOptions.from_env(env, kind)
    return dataclasses.replace(
        config, address=address, namespace=prefix or config.namespace, options=own
    )


def aws_has_server(config: ChannelConfig) -> bool:
    """An endpoint is named, or AWS itself is (credentials are configured)."""
    own = options(config, AwsOptions)
    return bool(config.address or own.queue_address) or own.credentials


class AwsChannel(Channel):
    """What the ``sqs`` and ``sns`` transports share as a transport: boto3's settings and
    endpoints, AWS itself when credentials are configured, an embedded moto_server otherwise."""

    OPTIONS = AwsOptions
    EMBEDDED = "fsd.embedded.aws:moto_server"
    LOGGERS = ("boto3", "botocore", "s3transfer")

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        return aws_settings(config, env, config.kind)

    @classmethod
    def has_server(cls, config: ChannelConfig) -> bool:
        return aws_has_server(config)


def aws_client(
    config: ChannelConfig, service: str, *, address: str | None = None, pool: int = 16
) -> Any:
    """A boto3 client for ``service`` at ``address`` (default ``config.address``; empty: the
    endpoint boto3 itself resolves, AWS's own unless its variables name another).

    Keys come from the config when it has them (an embedded server's), else from boto3's own
    chain (environment, shared files, the Lambda or container role). No client retries: the
    channels retry transport failures themselves, within ``retry_seconds``.
    """
    own = options(config, AwsOptions)
    session = boto3.session.Session(
        aws_access_key_id=own.access_key or None,
        aws_secret_access_key=own.secret_key or None,
        aws_session_token=own.session_token or None,
        region_name=own.region,
    )
    settings = botocore.config.Config(
        connect_timeout=config.connect_timeout,
        read_timeout=LONG_POLL + 10,
        retries={"total_max_attempts": 1},
        max_pool_connections=pool,
    )
    client = session.client  # service is a plain str: the stubs only type literal names
    endpoint = config.address if address is None else address
    return client(service, endpoint_url=endpoint or None, config=settings)  # type: ignore[call-overload]


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def retry(op: Callable[[], T], where: str, what: str, seconds: float) -> T:
    """Run ``op``, retrying transport failures, 5xx and throttling for ``seconds``.

    A refusal (bad keys, no permission) or another client error raises ChannelError at once.
    """
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return op()
        except botocore.exceptions.ClientError as exc:
            code = error_code(exc)
            if code in REFUSED:
                raise ChannelError(
                    f"{where} refused to {what}: {code} (check the credentials)"
                ) from None
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            retryable = status >= 500 or "Throttl" in code
            if not retryable or time.monotonic() + delay > deadline:
                raise ChannelError(f"{where}: cannot {what}: {code}") from None
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            if time.monotonic() + delay > deadline:
                raise ChannelError(
                    f"{where} unreachable for {seconds:g} s (could not {what}): "
                    f"{type(exc).__name__}"
                ) from None
            log.debug("%s: %s failed (%s); retrying", where, what, exc)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def slot_text(slot: Slot) -> str:
    """A slot as the text a message carries (``kind.layer.src.dst.chunk``)."""
    return f"{slot.kind}.{slot.layer}.{slot.src}.{slot.dst}.{slot.chunk}"


def parse_slot(text: object) -> Slot | None:
    """The slot a message names, or None (messages are hostile until the MAC is checked)."""
    parts = text.split(".") if isinstance(text, str) and len(text) <= 64 else []
    if len(parts) != 5:
        return None
    try:
        kind, layer, src, dst, chunk = (int(p) for p in parts)
    except ValueError:
        return None
    return Slot(kind, layer, src, dst, chunk)


def long_polls(receive: Callable[[int], list[Any]], deadline: float) -> Iterator[list[Any]]:
    """Each non-empty batch ``receive(wait_seconds)`` answers, long-polling until ``deadline``."""
    while (left := deadline - time.monotonic()) > 0:
        messages = receive(min(LONG_POLL, max(1, math.ceil(left))))
        if messages:
            yield messages


def delete_messages(sqs: Any, url: str, handles: list[str], me: int) -> None:
    """Delete received messages (off the latency path: a failure only means a redelivery)."""
    entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
    try:
        sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as e:
        log.debug("endpoint %d: delete failed (%s): the frames come again", me, e)


# -- what runs that never cleaned up left: reaped by the next coordinator ------------------------

OWNER_TAG = "fsd-owner"
EXPIRES_TAG = "fsd-expires"
REAP_EVERY = 300.0
"""Seconds between two reapings of one endpoint and prefix by one process."""
_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() takes fullwidth ones too
_MAX_LISTED = 5000  # queues looked at per reaping (ListQueues pages of 1000)
_reaped: dict[tuple[str, str], float] = {}


def run_tags(ttl_seconds: float) -> dict[str, str]:
    """The tags of a run's coordinator queue: its owner and when it expires."""
    return {OWNER_TAG: lifetime.owner_stamp(), EXPIRES_TAG: str(int(time.time() + ttl_seconds))}


def tagged_expiry(tags: Mapping[str, str]) -> float | None:
    """When a run expires, from its queue's tags (written by anyone with SQS rights: hostile
    until checked): whole seconds of at most 12 digits, else None (unknown)."""
    raw = tags.get(EXPIRES_TAG, "")
    return float(raw) if isinstance(raw, str) and _SECONDS.fullmatch(raw) else None


def run_queue(prefix: str) -> re.Pattern[str]:
    """The name of a run's queue under ``prefix``: ``<prefix>-<run hex>-<who>``."""
    return re.compile(rf"{re.escape(prefix)}-(?P<run>[0-9a-f]{{32}})-(?P<who>c|w[0-9]{{1,5}}|live)")


def _listed(sqs: Any, prefix: str, count: Callable[[], None]) -> list[str]:
    urls: list[str] = []
    kwargs: dict[str, Any] = {"QueueNamePrefix": f"{prefix}-", "MaxResults": 1000}
    while len(urls) < _MAX_LISTED:
        count()
        answer = sqs.list_queues(**kwargs)
        urls += answer.get("QueueUrls", [])
        if not answer.get("NextToken"):
            break
        kwargs["NextToken"] = answer["NextToken"]
    return urls


def _abandoned(
    sqs: Any, marker: str | None, oldest: str, ttl: float, count: Callable[[], None]
) -> bool:
    """Whether the run whose coordinator queue is ``marker`` (None: gone) has ended."""
    now = time.time()
    if marker is not None:
        count()
        tags = sqs.list_queue_tags(QueueUrl=marker).get("Tags", {})
        owner, expires = tags.get(OWNER_TAG, ""), tagged_expiry(tags)
        if owner and lifetime.stamp_here(owner):
            return lifetime.stamp_gone(owner)  # this machine's: alive or not, we can tell
        if expires is not None:
            return expires < now
    count()
    attrs = sqs.get_queue_attributes(QueueUrl=oldest, AttributeNames=["CreatedTimestamp"])
    created = attrs.get("Attributes", {}).get("CreatedTimestamp", "")
    return created.isdigit() and int(created) + ttl < now


def reap_runs(
    sqs: Any,
    where: str,
    prefix: str,
    marker: str,
    own: bytes,
    ttl: float,
    count: Callable[[], None] = lambda: None,
) -> int:
    """Delete every queue of the runs under ``prefix`` that ended without cleaning up (see the
    module's doc); ``marker`` is the ``who`` of a run's coordinator queue, ``count`` is called
    once per request. Never raises: a failure only leaves the queues for the next time.
    Returns the queues deleted."""
    key = (where, prefix)
    clock = time.monotonic()
    if clock - _reaped.get(key, -math.inf) < REAP_EVERY:
        return 0
    _reaped[key] = clock
    pattern = run_queue(prefix)
    runs: dict[str, dict[str, str]] = {}
    removed = 0
    try:
        for url in _listed(sqs, prefix, count):
            m = pattern.fullmatch(url.rsplit("/", 1)[-1])
            if m is not None and m["run"] != own.hex():
                runs.setdefault(m["run"], {})[m["who"]] = url
        for run, queues in runs.items():
            oldest = queues.get(marker) or next(iter(queues.values()))
            if not _abandoned(sqs, queues.get(marker), oldest, ttl, count):
                continue
            for url in queues.values():
                try:
                    count()
                    sqs.delete_queue(QueueUrl=url)
                    removed += 1
                except botocore.exceptions.ClientError as exc:
                    if error_code(exc) not in MISSING_QUEUE:
                        raise
            log.info(
                "removed %d queues of run %s, which ended without cleaning up", len(queues), run
            )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
        log.debug("%s: reaping abandoned runs failed (%s); next time", where, exc)
    return removed
