"""The operator's settings, read once from its environment (and mounted secret files).

Every variable, its default and bounds: docs/configuration.md (from :data:`VARIABLES` and each
platform's own, :mod:`fsd.k8s.platforms`).

Every variable is read through :mod:`fsd.settings`, which holds the defaults the operator shares
with the functions and the CLI (fan-out, timeouts, ...); what the functions get for their
transports' servers, and the secrets they mount by default, are the transports' own declarations
(:func:`fsd.channels.cluster_env`, :func:`fsd.channels.cluster_secrets`). Numbers
are plain decimals within the bounds shown (no ``1e3``, ``nan``, ``inf``, hex or underscores);
anything else is an :class:`InputError` naming the variable (the operator refuses to start rather
than run on a bad setting). An unset or blank variable takes its default.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from fsd import channels, launch, settings
from fsd.errors import InputError
from fsd.k8s import platforms
from fsd.k8s.access import ModelAccess
from fsd.k8s.spec import CHANNELS
from fsd.settings import Variable
from fsd.store import StoreConfig
from fsd.variables import COMMON, SECRETS_DIR, function_env, secrets_dir

DEFAULT_SECRETS = (
    *channels.cluster_secrets(),
    *(name for kind in launch.PLATFORMS for name in launch.platform(kind).Options.SECRETS),
    *(var.secret_file for var in COMMON if var.secret_file),
)
"""The secrets the functions mount unless ``FSD_FUNCTION_SECRETS`` says: those the chart's
transports and the platforms declare, and the deployment's own (``fsd-run-key``)."""
_STORE_ADDRESS = StoreConfig.VARIABLES[0].name  # the store's server (declared first)
MB = 1024 * 1024
MAX_SOURCE_MB = 8192  # FSD_OPERATOR_MAX_SOURCE_MB
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Secret's name


def repository(image: str) -> str:
    """``image`` without tag or digest: ``fsd.local/fsd-worker:1`` -> ``fsd.local/fsd-worker``."""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition("/")
    return f"{head}/{tail.split(':', 1)[0]}" if head else tail.split(":", 1)[0]


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``image`` is one of ``prefixes``' images (see ``FSD_ALLOWED_IMAGES``).

    ``ttl.sh/fsd-worker`` allows ``ttl.sh/fsd-worker``, ``:tag`` and ``@sha256:...`` but not
    ``ttl.sh/fsd-worker-evil``; ``registry.example/fsd/`` allows every image under it.
    """
    if not image or any(c.isspace() for c in image):
        return False
    for prefix in prefixes:
        if not prefix:
            continue
        if image == prefix:
            return True
        if image.startswith(prefix) and (prefix.endswith("/") or image[len(prefix)] in ":@"):
            return True
    return False


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the handlers need besides the object; plain data, secrets out of ``repr``."""

    store: StoreConfig  # the model store: endpoint, bucket, keys
    #: what the functions get for the servers of the chart's transports, by the variables they
    #: read (:func:`fsd.channels.cluster_env`); the model store's own is ``store``'s
    transport_env: Mapping[str, str] = field(default_factory=lambda: channels.cluster_env({}))
    channels: tuple[str, ...] = CHANNELS
    shared: ModelAccess = field(default_factory=ModelAccess)
    coordinator_image: str = "fsd.local/fsd-coordinator:latest"
    worker_image: str = "fsd.local/fsd-worker:latest"
    secrets: tuple[str, ...] = DEFAULT_SECRETS
    secrets_dir: str = SECRETS_DIR
    allowed_images: tuple[str, ...] = ()  # empty: the repositories of the two default images
    fanout: int = settings.FANOUT
    max_inflight: int = settings.MAX_INFLIGHT
    retry_seconds: float = 15.0
    refresh_seconds: float = 30.0
    max_source_bytes: int = MAX_SOURCE_MB * MB
    kube_url: str = ""
    #: where a model without ``spec.platform`` runs (``FSD_PLATFORM``), and each platform's own
    #: operator settings by name (:func:`fsd.k8s.platforms.options_from_env`; a platform
    #: missing here takes its defaults)
    platform: str = platforms.DEFAULT
    platform_options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.store.endpoint:
            raise InputError(f"the operator needs the model store's endpoint ({_STORE_ADDRESS})")
        if self.fanout < 1 or self.max_inflight < 1:
            raise InputError("FSD_FANOUT and FSD_MAX_INFLIGHT must be >= 1")
        for name in self.secrets:
            if not _SECRET_NAME.fullmatch(name):
                raise InputError(f"FSD_FUNCTION_SECRETS: {name!r} is not a valid secret name")
        unknown = [c for c in self.channels if c not in CHANNELS]
        if not self.channels or unknown:
            raise InputError(
                f"FSD_CHANNELS must name transports the chart runs ({', '.join(CHANNELS)}), "
                f"got {','.join(self.channels)[:60]!r}"
            )

    @property
    def image_prefixes(self) -> tuple[str, ...]:
        """``FSD_ALLOWED_IMAGES``, or the repositories of the default images."""
        if self.allowed_images:
            return self.allowed_images
        return (repository(self.coordinator_image), repository(self.worker_image))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        env = function_env(os.environ if environ is None else environ)
        text = functools.partial(settings.text, env)
        return cls(
            store=StoreConfig.from_env(env),
            transport_env=channels.cluster_env(env),
            channels=tuple(dict.fromkeys(settings.names(env, "FSD_CHANNELS"))) or CHANNELS,
            shared=ModelAccess.parse(text("FSD_SHARED_MODELS")),
            coordinator_image=text("FSD_COORDINATOR_IMAGE", cls.coordinator_image),
            worker_image=text("FSD_WORKER_IMAGE", cls.worker_image),
            secrets=settings.names(env, "FSD_FUNCTION_SECRETS") or DEFAULT_SECRETS,
            secrets_dir=str(secrets_dir(env)),
            allowed_images=settings.names(env, "FSD_ALLOWED_IMAGES"),
            fanout=settings.integer(env, "FSD_FANOUT", cls.fanout, low=1, high=settings.MAX_FANOUT),
            max_inflight=settings.integer(
                env, "FSD_MAX_INFLIGHT", cls.max_inflight, low=1, high=254
            ),
            retry_seconds=settings.seconds(
                env, "FSD_OPERATOR_RETRY_SECONDS", cls.retry_seconds, zero=True
            ),
            refresh_seconds=refresh_seconds(env),
            max_source_bytes=settings.integer(
                env, "FSD_OPERATOR_MAX_SOURCE_MB", MAX_SOURCE_MB, low=1, high=1024 * 1024
            )
            * MB,
            kube_url=text("FSD_KUBE_URL"),
            platform=_platform(text("FSD_PLATFORM", cls.platform)),
            platform_options=platforms.options_from_env(env),
        )


VARIABLES = (
    Variable(
        "FSD_PLATFORM",
        "where a model without `spec.platform` runs (fsd.k8s.platforms)",
        default=platforms.DEFAULT,
    ),
    *channels.cluster_variables(),
    Variable(
        "FSD_CHANNELS",
        "the transports the functions may use, comma-separated; a `spec.channel` outside them "
        "is an InvalidSpec, a request naming one a 400",
        default=",".join(CHANNELS),
    ),
    Variable(
        "FSD_SHARED_MODELS",
        "models pushed with fsd model push that an admin shares, comma-separated "
        "`<namespace>/<model>` (`*` for every namespace; a model ending in `*` is a prefix); a "
        "namespace reaches only these and the models pushed for its own objects",
    ),
    Variable(
        "FSD_COORDINATOR_IMAGE",
        "the coordinator's image unless `spec.image` says (a name no registry answers to: the "
        "chart sets the image users pushed)",
        default=OperatorConfig.coordinator_image,
    ),
    Variable(
        "FSD_WORKER_IMAGE", "the worker's image likewise", default=OperatorConfig.worker_image
    ),
    Variable(
        "FSD_ALLOWED_IMAGES",
        "comma-separated image prefixes `spec.image` may use; a prefix matches the image "
        "itself, `prefix:tag`, `prefix@digest`, or anything under it when it ends with `/`",
        default="the two default images' repositories",
    ),
    Variable(
        "FSD_FUNCTION_SECRETS",
        "comma-separated secrets the functions mount; the operator keeps them from its own "
        "copies in FSD_SECRETS_DIR",
        default=",".join(DEFAULT_SECRETS),
    ),
    Variable(
        "FSD_FANOUT",
        f"the coordinator's fan-out, and the largest the workers accept (1..{settings.MAX_FANOUT})",
        default=str(settings.FANOUT),
    ),
    Variable(
        "FSD_MAX_INFLIGHT",
        "invocations per worker replica (1..254: the worker serves them with FSD_THREADS = "
        "this + 2)",
        default=str(settings.MAX_INFLIGHT),
    ),
    Variable(
        "FSD_OPERATOR_RETRY_SECONDS",
        "delay before retrying a temporary failure (0..3600)",
        default=f"{OperatorConfig.retry_seconds:g}",
    ),
    Variable(
        "FSD_OPERATOR_REFRESH_SECONDS",
        "how often readiness is refreshed (0: never; ..86400)",
        default=f"{OperatorConfig.refresh_seconds:g}",
    ),
    Variable(
        "FSD_OPERATOR_MAX_SOURCE_MB",
        "cap on a `spec.source.url` folder downloaded, in whole MiB (1..1048576)",
        default=str(MAX_SOURCE_MB),
    ),
    Variable(
        "FSD_KUBE_URL",
        "the Kubernetes API when a platform needs it",
        default="in-cluster config, else the kubeconfig",
    ),
)
"""What the operator reads besides the model store's variables, the shared ones
(:data:`fsd.variables.COMMON`) and each platform's (:mod:`fsd.k8s.platforms`)."""


def _platform(name: str) -> str:
    """``FSD_PLATFORM``: a name of :data:`fsd.k8s.platforms.PLATFORMS`."""
    if name not in platforms.PLATFORMS:
        raise InputError(f"FSD_PLATFORM must be one of {', '.join(platforms.PLATFORMS)}: {name!r}")
    return name


def refresh_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How often the readiness timer runs (it is registered before the config is built)."""
    env = os.environ if environ is None else environ
    default = OperatorConfig.refresh_seconds
    return settings.seconds(env, "FSD_OPERATOR_REFRESH_SECONDS", default, high=86400, zero=True)
