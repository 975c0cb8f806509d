"""What the AWS transports (``sqs``, ``sns``) share: a boto3 client from a ChannelConfig, and
retrying transport failures and throttling (not refusals) within ``retry_seconds``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from fsd.channels.base import ChannelConfig, Slot
from fsd.errors import ChannelError

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


def aws_client(config: ChannelConfig, service: str, *, pool: int = 16) -> Any:
    """A boto3 client for ``service`` at ``config.address`` (empty: AWS's own endpoint).

    Keys come from the config when it has them (an embedded server's), else from boto3's own
    chain (environment, shared files, the Lambda or container role). No client retries: the
    channels retry transport failures themselves, within ``retry_seconds``.
    """
    session = boto3.session.Session(
        aws_access_key_id=config.access_key or None,
        aws_secret_access_key=config.secret_key or None,
        region_name=config.region,
    )
    settings = botocore.config.Config(
        connect_timeout=config.connect_timeout,
        read_timeout=LONG_POLL + 10,
        retries={"total_max_attempts": 1},
        max_pool_connections=pool,
    )
    client = session.client  # service is a plain str: the stubs only type literal names
    return client(service, endpoint_url=config.address or None, config=settings)  # type: ignore[call-overload]


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
