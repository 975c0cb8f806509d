"""Store seam: one module per object store behind :class:`StoreBackend`, found by name in one
registry, as transports are (:data:`fsd.channels.TRANSPORTS`).

A store backend moves bytes by key (``prepare``, ``read``, ``write``, ``delete_prefix``, and the
operator's ``list_folder``/``download`` of a source folder) and declares the rest: the variables
and flags its :class:`StoreConfig` comes from, the server it can start on this machine, its
client library's loggers. The models' layout and checks over those bytes are
:class:`fsd.store.Objects`, whatever holds them; :class:`fsd.store.ModelStore` picks the backend
named by :attr:`StoreConfig.kind` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from fsd import registry, settings
from fsd.settings import Variable

STORES: Mapping[str, str] = {
    "s3": "fsd.stores.s3:S3Objects",
}
"""Store name -> ``module:class``, imported only when that store is used (its client library
loads with it). The first is the one a deployment uses unless told (:data:`DEFAULT`)."""

DEFAULT = next(iter(STORES))


def backend(kind: str) -> type[StoreBackend]:
    """The backend class of ``kind``; :class:`InputError` for a name not in the registry."""
    cls: type[StoreBackend] = registry.load(STORES, kind, "model store")
    return cls


def variables() -> tuple[Variable, ...]:
    """Every variable the store backends read, each once (the first backend declaring it wins)."""
    found: dict[str, Variable] = {}
    for kind in STORES:
        for var in backend(kind).VARIABLES:
            found.setdefault(var.name, var)
    return tuple(found.values())


def loggers() -> tuple[str, ...]:
    """The loggers of the store backends' client libraries (:attr:`StoreBackend.LOGGERS`)."""
    return tuple(dict.fromkeys(n for kind in STORES for n in backend(kind).LOGGERS))


class _Variables:
    """``StoreConfig.VARIABLES``: read from the backends when first asked, so that naming the
    config imports no client library."""

    def __get__(self, obj: object, owner: type | None = None) -> tuple[Variable, ...]:
        return variables()


class _Embedded:
    """``StoreConfig.EMBEDDED``: the backend's (a config's own kind, else the default's)."""

    def __get__(self, obj: StoreConfig | None, owner: type | None = None) -> str:
        return backend(obj.kind if obj is not None else DEFAULT).EMBEDDED


@dataclass(frozen=True)
class StoreConfig:
    """Where the model store is and how to sign in: an endpoint, a bucket, keys, a region.

    Configured on its own, not with the transport: a deployment may exchange over one backend
    and keep its models in another. ``kind`` names the backend (:data:`STORES`); what it reads
    (:attr:`VARIABLES`, flags included) is that backend's declaration. Keys are kept out of
    ``repr``.
    """

    endpoint: str = ""
    bucket: str = settings.BUCKET
    region: str = settings.REGION
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    connect_timeout: float = 10.0
    kind: str = DEFAULT

    VARIABLES = _Variables()  # not annotated: a dataclass would read it as a field default
    """What the store backends read; the flags are ``fsd model``'s (no embedded store there)."""

    EMBEDDED = _Embedded()
    """``module:function`` of the server the backend can start on this machine (a context
    manager taking and yielding a StoreConfig), outside the runtime's imports
    (:func:`fsd.store.embedded`)."""

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        flags: Mapping[str, object] | None = None,
        kind: str = DEFAULT,
    ) -> StoreConfig:
        """The store the flags (they win: argparse's namespace as a dict will do) and ``env``
        name, checked before any connection; :class:`InputError` names the setting at fault.
        An empty endpoint: none configured."""
        return backend(kind).from_env(env, flags or {})

    def to_env(self) -> dict[str, str]:
        """The variables (no secrets) a deployment reads this store back from."""
        return backend(self.kind).to_env(self)

    def secret_env(self) -> dict[str, str]:
        """The secret variables that complete :meth:`to_env`, only for a child process on this
        machine that must reach the same store (a local stack's functions)."""
        return backend(self.kind).secret_env(self)


class StoreBackend:
    """Bytes by key in one store: what a backend implements and declares.

    Errors: :class:`fsd.errors.ModelNotFound` for what is not there, :class:`fsd.errors.
    StoreError` for a store that failed (no secret in the message), :class:`InputError` for a
    config that names no usable store (raised by the constructor, before any connection).
    """

    VARIABLES: ClassVar[tuple[Variable, ...]] = ()
    """What :meth:`from_env` reads (name, meaning, default, ``fsd model``'s flag, secret file)."""
    EMBEDDED: ClassVar[str] = ""
    """``module:function`` of a server it can start on this machine, or ``""``."""
    LOGGERS: ClassVar[tuple[str, ...]] = ()
    """Its client library's loggers, quieted by the CLI as the transports' are."""
    SCHEME: ClassVar[str] = ""
    """The URL scheme naming a folder of this store, ``<scheme>://bucket/prefix`` (the
    operator's ``spec.source.url``), or ``""``."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], flags: Mapping[str, object]) -> StoreConfig:
        raise NotImplementedError

    @classmethod
    def to_env(cls, config: StoreConfig) -> dict[str, str]:
        raise NotImplementedError

    @classmethod
    def secret_env(cls, config: StoreConfig) -> dict[str, str]:
        raise NotImplementedError

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    def prepare(self) -> None:
        """Reach the store and create the bucket if missing (a no-op once done)."""
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def read(self, key: str, limit: int | None = None) -> bytes:
        """One object's bytes; with ``limit``, a larger object is refused without reading it
        all (:class:`fsd.errors.ModelFormatError`)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        """Delete every object under ``prefix`` (those ``last`` picks after the others); how
        many there were (0: no bucket)."""
        raise NotImplementedError

    def list_folder(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` in ``bucket`` of this store (the
        operator's model source). ModelNotFound (``no such bucket``) or StoreError, whose
        message the caller prefixes with what it was reading."""
        raise NotImplementedError

    def download(self, bucket: str, key: str, target: Path) -> None:
        """Object ``key`` of ``bucket`` into the file ``target``; errors as :meth:`list_folder`."""
        raise NotImplementedError


__all__ = [
    "DEFAULT",
    "STORES",
    "StoreBackend",
    "StoreConfig",
    "backend",
    "loggers",
    "variables",
]
