"""Channel configuration from flags and the environment, the same for the CLI and the functions.

Flags win over environment variables. Secrets come only from the environment (or files that
platforms mount, read by the functions), never from flags, so they stay out of shell history and
process listings.

============================  ============================================================
``FSD_NATS_URL``              NATS server URL(s), comma-separated; may embed user:password
``FSD_NATS_CREDS``            path of a NATS ``.creds`` file (JWT + NKey seed)
``FSD_NATS_TOKEN``            NATS token
``FSD_NATS_USER``             NATS user (with ``FSD_NATS_PASSWORD``)
``FSD_S3_ENDPOINT``           S3 endpoint URL, e.g. ``https://s3.amazonaws.com``; when absent,
                              ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL`` (as every AWS
                              SDK and tool reads them; off with
                              ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``)
``FSD_S3_BUCKET``             bucket for activations (default ``fsd``; created if missing)
``AWS_ACCESS_KEY_ID``         S3 access key
``AWS_SECRET_ACCESS_KEY``     S3 secret key
``AWS_SESSION_TOKEN``         S3: the session token of temporary keys (a Lambda role's)
``AWS_REGION``                S3 region (default ``us-east-1``)
``AWS_ENDPOINT_URL_SQS``      sqs/sns: the endpoint of SQS (and SNS: ``AWS_ENDPOINT_URL_SNS``),
                              then ``AWS_ENDPOINT_URL``, as the AWS SDKs read them; absent:
                              AWS itself when credentials are configured, else ``fsd run``
                              starts an embedded ``moto_server``
``FSD_AWS_PREFIX``            sqs/sns: the deployment's prefix for queue and topic names
                              (default ``fsd``); credentials come from boto3's own chain
                              (environment, shared files, the function's role)
``FSD_RUN_KEY``               deployment secret that authenticates frames and invocations
                              (at least 32 characters; ``fsd run`` makes its own per run)
============================  ============================================================

Each transport reads its own variables (its class's ``settings``, see
:class:`fsd.channels.base.Channel`); this table lists them all in one place. Addresses are checked
before any connection, with the rules of :mod:`fsd.urls`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from fsd.auth import load_secret
from fsd.channels import transport
from fsd.channels.base import ChannelConfig
from fsd.errors import AuthError, InputError


def channel_config(
    kind: str,
    *,
    nats_url: str | None = None,
    s3_endpoint: str | None = None,
    s3_bucket: str | None = None,
    env: Mapping[str, str] | None = None,
    base: ChannelConfig | None = None,
) -> ChannelConfig:
    """The configuration for ``kind``; an empty address means "start an embedded server".

    What is common (the run key) is read here; the rest by the transport's own
    :meth:`fsd.channels.base.Channel.settings`.
    """
    env = os.environ if env is None else env
    cls = transport(kind)
    cfg = dataclasses.replace(base or ChannelConfig(), kind=kind)
    if env.get("FSD_RUN_KEY"):
        try:
            cfg = dataclasses.replace(cfg, secret=load_secret(env["FSD_RUN_KEY"]))
        except AuthError as exc:
            raise InputError(str(exc)) from None
    flags = {"nats_url": nats_url, "s3_endpoint": s3_endpoint, "s3_bucket": s3_bucket}
    return cls.settings(cfg, env, {k: v for k, v in flags.items() if v})
