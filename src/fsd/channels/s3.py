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

import dataclasses
import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import urllib3
from minio.error import MinioException, S3Error

from fsd import settings
from fsd.channels.base import COORDINATOR, Channel, ChannelConfig, Slot, TransportOptions, options
from fsd.errors import ChannelError
from fsd.s3client import (
    S3_VARIABLES,
    delete_prefix,
    minio_client,
    s3_bucket,
    s3_endpoint,
    s3_keys,
    s3_secret_env,
)
from fsd.settings import Variable

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


@dataclass(frozen=True)
class S3Options(TransportOptions):
    """The bucket, region and keys (the endpoint is the config's ``address``); empty keys:
    anonymous, as minio takes them."""

    bucket: str = settings.BUCKET
    region: str = settings.REGION
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)

    ADDRESS = "FSD_S3_ENDPOINT"
    VARIABLES = S3_VARIABLES
    # the operator gives the functions its model store (the same endpoint, bucket and keys),
    # unless they see the endpoint elsewhere
    CLUSTER = (
        Variable(
            "FSD_FUNCTION_S3_ENDPOINT",
            "the model store as the functions see it",
            default="FSD_S3_ENDPOINT",
        ),
    )
    CLUSTER_SECRETS = ("fsd-s3-access-key", "fsd-s3-secret-key")

    @classmethod
    def cluster_env(cls, env: Mapping[str, str]) -> dict[str, str]:
        endpoint = settings.text(env, "FSD_FUNCTION_S3_ENDPOINT")
        return {"FSD_S3_ENDPOINT": endpoint} if endpoint else {}

    @classmethod
    def from_env(cls, env: Mapping[str, str], bucket: str | None = None) -> S3Options:
        access_key, secret_key, session_token = s3_keys(env)
        return cls(
            bucket=s3_bucket(bucket, env),
            region=settings.aws_region(env),
            access_key=access_key,
            secret_key=secret_key,
            session_token=session_token,
        )

    def to_env(self) -> dict[str, str]:
        return {"FSD_S3_BUCKET": self.bucket}

    def secret_env(self) -> dict[str, str]:
        return s3_secret_env(self)


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
    # us-east-1 list prices, S3 Standard: $0.005 per 1,000 PUT, COPY, POST, LIST requests,
    # $0.0004 per 1,000 GET, SELECT and all other requests
    PRICES = {"s3_put": 0.005 / 1e3, "s3_get": 0.0004 / 1e3}
    SERVER = "--s3-endpoint or FSD_S3_ENDPOINT"
    OPTIONS = S3Options
    EMBEDDED = "fsd.embedded.s3:s3_server"
    LOGGERS = ("minio",)
    EXAMPLE = "fsd run --data DIR --layers 30 --images 500 --channel s3 --json"
    STACK = True

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        options = S3Options.from_env(env, flags.get("s3_bucket"))
        endpoint = s3_endpoint(flags.get("s3_endpoint"), env)
        return dataclasses.replace(config, address=endpoint, options=options)

    def __init__(self, config: ChannelConfig, run: bytes, me: int) -> None:
        super().__init__(config, run, me)
        if not config.address:
            raise ChannelError("s3 channel needs an endpoint (--s3-endpoint or FSD_S3_ENDPOINT)")
        self._options = options(config, S3Options)
        # no client retries: we retry ourselves, within retry_seconds
        self._s3, self._where = minio_client(
            config.address,
            self._options,
            connect_timeout=config.connect_timeout,
            maxsize=32,
            read_timeout=30.0,
            retries=urllib3.Retry(total=0),
            error=ChannelError,
        )
        self._bucket = self._options.bucket
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
            self._s3.make_bucket(self._bucket, location=self._options.region)
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
