"""The ``s3`` transport: any S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph).

Each frame is one object, ``<namespace>/<run>/<layer>/<dst>/<kind>.<src>.<chunk>``. A receiver
knows from the plan exactly whom it waits for, so it GETs those keys directly, with a short
backoff while they are not there yet: no LIST polling (FSD-Inference listed the bucket until
objects appeared). Every request is counted, because object stores bill per request and a GET
that finds nothing is billed too. Re-sending a frame overwrites the same key, so duplicates
collapse; the receiver also remembers what it delivered. An object that fails its MAC is left in
place and polled again (counted once): the genuine frame overwrites it when its sender writes it.

Objects are removed by the coordinator at the end of a run (one LIST and batched DELETEs on the
run's prefix). Abandoned runs are for the bucket's lifecycle rule (docs/channels.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import urllib3
from minio.error import MinioException, S3Error

from fsd import settings
from fsd.channels.base import COORDINATOR, Channel, ChannelConfig, Slot
from fsd.errors import ChannelError, InputError
from fsd.s3client import delete_prefix, minio_client
from fsd.urls import check_s3_endpoint

log = logging.getLogger(__name__)

T = TypeVar("T")

# GET rounds at _FIRST_WAIT intervals this many times (the object is due), then back off. A
# miss costs the server about what a hit does; on a 2-core machine 2 ms polled fastest overall
_FAST_POLLS = 10
_FIRST_WAIT = 0.002
_MAX_WAIT = 0.02  # the backoff doubles up to this (bounds added latency and the GET bill)
_MISSING = ("NoSuchKey", "NoSuchObject")


def _endpoint_token(endpoint: int) -> str:
    return "c" if endpoint == COORDINATOR else str(endpoint)


#: Where the S3 endpoint comes from when no flag names it, first found wins: fsd's own variable,
#: then the AWS SDKs' service-specific and global ones, in the SDKs' own order
#: (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html).
S3_ENDPOINT_VARS = ("FSD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint_setting(flag: str | None, env: Mapping[str, str]) -> tuple[str, str]:
    """``(where it came from, endpoint)``; ``("", "")`` when nothing names one.

    ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`` makes the AWS variables ignored, as in the SDKs.
    """
    if flag:
        return "--s3-endpoint", flag
    ignore_aws = settings.aws_endpoints_ignored(env)
    for name in S3_ENDPOINT_VARS:
        if ignore_aws and name.startswith("AWS_"):
            break
        value = settings.text(env, name)
        if value:
            return name, value
    return "", ""


def _keys(env: Mapping[str, str]) -> tuple[str, str, str]:
    """The store's (access key, secret key, session token): its own
    (``FSD_S3_ACCESS_KEY_ID``/``FSD_S3_SECRET_ACCESS_KEY``, what the ``fsd-s3-*`` secret files
    set), else the AWS SDKs' variables.

    The S3 keys a function mounts stay S3's: they are never ``AWS_ACCESS_KEY_ID``, which every
    AWS client in the process (SQS, SNS, Lambda) would take as its credentials too.
    """
    own = settings.text(env, "FSD_S3_ACCESS_KEY_ID")
    if own:
        return own, settings.text(env, "FSD_S3_SECRET_ACCESS_KEY"), ""
    return (
        settings.text(env, "AWS_ACCESS_KEY_ID"),
        settings.text(env, "AWS_SECRET_ACCESS_KEY"),
        settings.text(env, "AWS_SESSION_TOKEN"),
    )


class S3Channel(Channel):
    """One endpoint of one run on a bucket."""

    OPS = ("put", "get", "get_miss", "list", "delete")
    # https://aws.amazon.com/s3/pricing/: PUT, COPY, POST, LIST at one price, GET and all other
    # requests at another, a GET that finds nothing billed all the same; DELETE is free
    BILLING = {
        "put": (("s3_put", 1.0),),
        "list": (("s3_put", 1.0),),
        "get": (("s3_get", 1.0),),
        "get_miss": (("s3_get", 1.0),),
    }
    SERVER = "--s3-endpoint or FSD_S3_ENDPOINT"

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        bucket = flags.get("s3_bucket", "") or settings.text(env, "FSD_S3_BUCKET") or config.bucket
        if not 3 <= len(bucket) <= 63 or not bucket.replace("-", "").replace(".", "").isalnum():
            raise InputError(f"invalid S3 bucket name {bucket!r}")
        if bucket != bucket.lower():
            raise InputError(f"S3 bucket names are lower case: {bucket!r}")
        source, endpoint = s3_endpoint_setting(flags.get("s3_endpoint"), env)
        if endpoint:
            check_s3_endpoint(endpoint, source)
        access_key, secret_key, session_token = _keys(env)
        return dataclasses.replace(
            config,
            address=endpoint,
            bucket=bucket,
            region=settings.aws_region(env, config.region),
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
        )

    @classmethod
    @contextlib.contextmanager
    def embedded(cls, config: ChannelConfig) -> Iterator[ChannelConfig]:
        from fsd.services import S3Server  # noqa: PLC0415 (only when one is needed)

        log.info("no S3 endpoint configured: starting an embedded SeaweedFS S3 server")
        with S3Server() as server:
            yield dataclasses.replace(
                config,
                address=server.endpoint,
                access_key=server.access_key,
                secret_key=server.secret_key,
                session_token="",
                bucket=server.bucket,
                region=server.region,
            )

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        if not config.address:
            raise ChannelError("s3 channel needs an endpoint (--s3-endpoint or FSD_S3_ENDPOINT)")
        # no client retries: we retry ourselves, within retry_seconds
        self._s3, self._where = minio_client(
            config, maxsize=32, read_timeout=30.0, retries=urllib3.Retry(total=0)
        )
        self._bucket = config.bucket
        self._prefix = f"{config.namespace}/{run.hex()}"
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"fsd-s3-{me}")
        self._puts: list[Future[None]] = []
        self._retry(self._ensure_bucket, "open the bucket")

    # -- plumbing ------------------------------------------------------------------------------

    def _retry(self, op: Callable[[], T], what: str) -> T:
        """Run ``op``, retrying transport failures (not S3 answers) for ``retry_seconds``."""
        deadline = time.monotonic() + self.config.retry_seconds
        delay = 0.05
        while True:
            try:
                return op()
            except S3Error as exc:
                if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise ChannelError(
                        f"s3 at {self._where} refused to {what}: {exc.code} (check the keys)"
                    ) from None
                if exc.code in ("NoSuchBucket",) or time.monotonic() + delay > deadline:
                    raise ChannelError(f"s3 at {self._where}: cannot {what}: {exc.code}") from None
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ChannelError(
                        f"s3 at {self._where} unreachable for {self.config.retry_seconds:g} s "
                        f"(could not {what}): {type(exc).__name__}"
                    ) from None
                log.debug("endpoint %d: s3 %s failed (%s); retrying", self.me, what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _ensure_bucket(self) -> None:
        self.stats.count("list")  # HEAD bucket is billed like a LIST
        if self._s3.bucket_exists(self._bucket):
            return
        try:
            self._s3.make_bucket(self._bucket, location=self.config.region)
            self.stats.count("put")
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _object(self, slot: Slot) -> str:
        s = slot
        return f"{self._prefix}/{s.layer}/{_endpoint_token(s.dst)}/{s.kind}.{s.src}.{s.chunk}"

    # -- sending -------------------------------------------------------------------------------

    def _transmit(self, frames: Sequence[tuple[Slot, bytes]]) -> None:
        """Start the upload and return: the worker computes while S3 stores (see :meth:`flush`)."""
        self._reap()
        uploads = [(self._object(slot), data) for slot, data in frames]
        self._puts.append(self._pool.submit(self._upload, uploads))

    def _upload(self, uploads: list[tuple[str, bytes]]) -> None:
        # later chunks first: a receiver that finds chunk 0 soon finds the rest there too
        for key, data in reversed(uploads):
            self._put(key, data)

    def _reap(self, wait: bool = False) -> None:
        """Forget finished uploads; raise the first failure; with ``wait``, finish them all."""
        if wait:
            for fut in self._puts:
                fut.result()
        done = [f for f in self._puts if f.done()]
        self._puts = [f for f in self._puts if not f.done()]
        for fut in done:
            fut.result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every send so far is stored (uploads retry for ``retry_seconds``)."""
        self._reap(wait=True)

    def _put(self, key: str, data: bytes) -> None:
        def op() -> None:
            self.stats.count("put")
            self._s3.put_object(self._bucket, key, io.BytesIO(data), len(data))

        self._retry(op, f"put {key}")

    # -- receiving -----------------------------------------------------------------------------

    def _get(self, key: str) -> bytes | None:
        """The object's bytes, or None while it does not exist."""

        def op() -> bytes | None:
            try:
                resp = self._s3.get_object(self._bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING:
                    self.stats.count("get_miss")
                    return None
                raise
            try:
                self.stats.count("get")
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._retry(op, f"get {key}")

    def _poll(self, wanted: Sequence[Slot], deadline: float) -> None:
        """GET the wanted objects, with a short backoff while none of them is there yet."""
        # peers upload at about the time we do: once ours are stored, theirs are about due
        self._reap(wait=True)
        wait = _FIRST_WAIT
        polls = 0
        while True:
            keys = [self._object(slot) for slot in wanted]
            found = (
                [self._get(keys[0])] if len(keys) == 1 else list(self._pool.map(self._get, keys))
            )
            accepted = False
            for slot, data in zip(wanted, found, strict=True):
                if data is not None:
                    accepted = self._deliver(slot, data) or accepted
            left = deadline - time.monotonic()
            if accepted or left <= 0:
                return
            time.sleep(min(wait, left))
            polls += 1
            if polls >= _FAST_POLLS:
                wait = min(wait * 2, _MAX_WAIT)

    # -- cleanup -------------------------------------------------------------------------------

    def purge_run(self, endpoints: Sequence[int] = ()) -> None:
        """Delete every object of this run (the coordinator calls it on every exit path)."""
        try:
            self._reap(wait=True)  # our own uploads (an ABORT, say) land before the listing
        except ChannelError as exc:
            log.warning("purging run %s with uploads still failing: %s", self.run.hex(), exc)
        try:
            removed, failed = delete_prefix(self._s3, self._bucket, f"{self._prefix}/")
            self.stats.count("list", 1 + removed // 1000)
            self.stats.count("delete", removed)
            for why in failed:
                log.warning("could not delete %s", why)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.warning("could not purge run %s: %s (the lifecycle rule will)", self.run.hex(), exc)

    def close(self) -> None:
        try:
            self._reap(wait=True)
        except ChannelError as exc:
            log.error("endpoint %d: closing with undelivered sends: %s", self.me, exc)
        self._pool.shutdown(wait=False, cancel_futures=True)
