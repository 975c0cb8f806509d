"""The operator's settings, read once from its environment (and mounted secret files).

===============================  ==============================================================
``FSD_OPENFAAS_URL``             the gateway the operator deploys through (default
                                 ``http://gateway.openfaas:8080``); also read for status in Pro
``FSD_OPENFAAS_MODE``            ``ce`` (gateway REST API, default) or ``pro`` (``Function``
                                 resources of the OpenFaaS operator, ``openfaas.com/v1``)
``FSD_GATEWAY_USER``             basic-auth user (default ``admin``)
``FSD_GATEWAY_PASSWORD``         basic-auth password, or
``FSD_GATEWAY_PASSWORD_FILE``    a file holding it (read on every use: rotated secrets work)
``FSD_GATEWAY_TIMEOUT``          seconds per gateway request (default 10)
``FSD_FUNCTION_NAMESPACE``       where functions go (CE default: the gateway's, usually
                                 ``openfaas-fn``; Pro default ``openfaas-fn``)
``FSD_FUNCTION_GATEWAY_URL``     the gateway as the functions see it, for ``FSD_WORKER_URL``
                                 (default ``http://gateway.openfaas:8080``)
``FSD_NATS_URL``                 NATS for the functions (default ``nats://nats.fsd:4222``)
``FSD_S3_ENDPOINT``              the model store (required), ``FSD_S3_BUCKET`` (default ``fsd``),
                                 ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_REGION``
                                 or the ``fsd-s3-*`` secret files (:mod:`fsd.settings`)
``FSD_FUNCTION_S3_ENDPOINT``     the store as the functions see it (default: ``FSD_S3_ENDPOINT``)
``FSD_COORDINATOR_IMAGE``        default images (``spec.image`` overrides), as in stack.yml:
``FSD_WORKER_IMAGE``             ``ttl.sh/fsd-coordinator:latest``, ``ttl.sh/fsd-worker:latest``
``FSD_FUNCTION_SECRETS``         comma-separated OpenFaaS secrets the functions mount (default:
                                 stack.yml's five, ``fsd-run-key`` included)
``FSD_FANOUT``                   the coordinator's fan-out, and the largest the workers accept
                                 (default 16)
``FSD_MAX_INFLIGHT``             invocations per worker replica (default 4)
``FSD_OPERATOR_RETRY_SECONDS``   delay before retrying a temporary failure (default 15)
``FSD_OPERATOR_REFRESH_SECONDS`` how often readiness is refreshed (default 30; 0: never)
``FSD_OPERATOR_MAX_SOURCE_MB``   cap on a source folder downloaded from S3 (default 8192)
``FSD_KUBE_URL``                 Pro mode: the Kubernetes API (default: in-cluster config,
                                 else the kubeconfig)
===============================  ==============================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fsd.channels.base import ChannelConfig
from fsd.channels.settings import channel_config
from fsd.errors import InputError
from fsd.settings import function_env

DEFAULT_SECRETS = (
    "fsd-nats-token",
    "fsd-s3-access-key",
    "fsd-s3-secret-key",
    "fsd-gateway-password",
    "fsd-run-key",
)
MODES = ("ce", "pro")


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need besides the object; plain data, secrets out of ``repr``."""

    store: ChannelConfig  # the model store: S3 endpoint, bucket, keys
    gateway_url: str = "http://gateway.openfaas:8080"
    mode: str = "ce"
    gateway_user: str = "admin"
    gateway_password: str = field(default="", repr=False)
    gateway_password_file: str = ""
    gateway_timeout: float = 10.0
    function_namespace: str = ""
    function_gateway_url: str = "http://gateway.openfaas:8080"
    nats_url: str = "nats://nats.fsd:4222"
    function_s3_endpoint: str = ""
    coordinator_image: str = "ttl.sh/fsd-coordinator:latest"
    worker_image: str = "ttl.sh/fsd-worker:latest"
    secrets: tuple[str, ...] = DEFAULT_SECRETS
    fanout: int = 16
    max_inflight: int = 4
    retry_seconds: float = 15.0
    refresh_seconds: float = 30.0
    max_source_bytes: int = 8192 * 1024 * 1024
    kube_url: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"FSD_OPENFAAS_MODE must be one of {', '.join(MODES)}: {self.mode!r}")
        if not self.store.address:
            raise InputError("the operator needs the model store's endpoint (FSD_S3_ENDPOINT)")
        if self.fanout < 1 or self.max_inflight < 1:
            raise InputError("FSD_FANOUT and FSD_MAX_INFLIGHT must be >= 1")

    @property
    def pro(self) -> bool:
        return self.mode == "pro"

    @property
    def namespace_for_functions(self) -> str:
        """Where Function resources go in Pro mode (the gateway decides in CE when empty)."""
        return self.function_namespace or "openfaas-fn"

    def password(self) -> str:
        """The gateway password: the file (if named) wins, read now so rotation is picked up."""
        if self.gateway_password_file:
            try:
                return Path(self.gateway_password_file).read_text().strip()
            except OSError as exc:
                raise InputError(
                    f"cannot read FSD_GATEWAY_PASSWORD_FILE {self.gateway_password_file}: {exc}"
                ) from None
        return self.gateway_password

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = function_env(os.environ if environ is None else environ)
        secrets = tuple(s.strip() for s in env.get("FSD_FUNCTION_SECRETS", "").split(",") if s)
        return cls(
            store=channel_config("s3", env=env),
            gateway_url=env.get("FSD_OPENFAAS_URL", cls.gateway_url),
            mode=env.get("FSD_OPENFAAS_MODE", cls.mode).lower(),
            gateway_user=env.get("FSD_GATEWAY_USER", cls.gateway_user),
            gateway_password=env.get("FSD_GATEWAY_PASSWORD", ""),
            gateway_password_file=env.get("FSD_GATEWAY_PASSWORD_FILE", ""),
            gateway_timeout=_number(env, "FSD_GATEWAY_TIMEOUT", cls.gateway_timeout),
            function_namespace=env.get("FSD_FUNCTION_NAMESPACE", ""),
            function_gateway_url=env.get("FSD_FUNCTION_GATEWAY_URL", cls.function_gateway_url),
            nats_url=env.get("FSD_NATS_URL", cls.nats_url),
            function_s3_endpoint=env.get("FSD_FUNCTION_S3_ENDPOINT", ""),
            coordinator_image=env.get("FSD_COORDINATOR_IMAGE", cls.coordinator_image),
            worker_image=env.get("FSD_WORKER_IMAGE", cls.worker_image),
            secrets=secrets or DEFAULT_SECRETS,
            fanout=int(_number(env, "FSD_FANOUT", cls.fanout)),
            max_inflight=int(_number(env, "FSD_MAX_INFLIGHT", cls.max_inflight)),
            retry_seconds=_number(env, "FSD_OPERATOR_RETRY_SECONDS", cls.retry_seconds),
            refresh_seconds=refresh_seconds(env),
            max_source_bytes=int(_number(env, "FSD_OPERATOR_MAX_SOURCE_MB", 8192) * 1024 * 1024),
            kube_url=env.get("FSD_KUBE_URL", ""),
        )


def refresh_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How often the readiness timer runs (it is registered before the config is built)."""
    env = os.environ if environ is None else environ
    return _number(env, "FSD_OPERATOR_REFRESH_SECONDS", OperatorConfig.refresh_seconds)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise InputError(f"{name} must be >= 0, got {raw!r}")
    return value
