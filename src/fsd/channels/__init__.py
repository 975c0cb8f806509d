"""Channel seam: one module per transport behind :class:`Channel`, found by name in one registry.

A transport is its module plus one line in :data:`TRANSPORTS`: its class declares everything
else fsd needs (its options and the variables and flags they come from, its embedded server,
counted operations and their billing; see :class:`fsd.channels.base.Channel`), so the CLI's
choices and flags, the functions' request schemas and secret files, the coordinator, the cost
model, docs/configuration.md and the conformance suite all follow from this table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

from fsd import registry
from fsd.channels.base import (
    COORDINATOR,
    Channel,
    ChannelConfig,
    ChannelStats,
    TransportOptions,
)
from fsd.errors import ChannelError
from fsd.settings import Variable

TRANSPORTS: Mapping[str, str] = {
    "local": "fsd.channels.local:LocalChannel",
    "nats": "fsd.channels.nats:NatsChannel",
    "s3": "fsd.channels.s3:S3Channel",
    "sqs": "fsd.channels.sqs:SqsChannel",
    "sns": "fsd.channels.sns:SnsChannel",
}
"""Channel name -> ``module:class``, imported only when that channel is used (each transport's
client library loads with it). The first remote one is a deployment's default
(:data:`DEPLOYED`)."""

CHANNELS = tuple(TRANSPORTS)
REMOTE_CHANNELS = tuple(k for k in CHANNELS if k != "local")
"""What functions may use: every transport but ``local`` (one machine's mailbox folders)."""
DEPLOYED = REMOTE_CHANNELS[0]
"""How a deployment's workers exchange unless told (the functions' ``FSD_CHANNEL``, the CRD's
``spec.channel``): the first remote transport of :data:`TRANSPORTS`."""


def transport(kind: str) -> type[Channel]:
    """The Channel class of ``kind``; :class:`InputError` for a name not in the registry."""
    cls: type[Channel] = registry.load(TRANSPORTS, kind, "channel")
    return cls


def open_channel(config: ChannelConfig, run: bytes, me: int) -> Channel:
    """Connect endpoint ``me`` of ``run`` to the transport named by ``config.kind``."""
    return transport(config.kind)(config, run, me)


class NoServer(ChannelError):
    """No server is configured for a transport, and none may be started here; ``server`` says
    what names one (a flag, a variable)."""

    def __init__(self, kind: str, server: str) -> None:
        super().__init__(f"{kind}: no server configured ({server})")
        self.kind = kind
        self.server = server


def configured(config: ChannelConfig) -> bool:
    """Whether ``config`` reaches a server of its transport (else one must be started): the one
    place this is decided, from the config alone (the environment it was read from is in it)."""
    return transport(config.kind).has_server(config)


def embedded(config: ChannelConfig) -> AbstractContextManager[ChannelConfig]:
    """Start the transport's own server on this machine (:attr:`Channel.EMBEDDED`, in the
    ``embedded`` extra) for as long as the context lasts; yields ``config`` pointing at it."""
    cls = transport(config.kind)
    if not cls.EMBEDDED:
        raise ChannelError(
            f"{config.kind}: no server configured ({cls.SERVER}) and none can be started here"
        )
    module, _, name = cls.EMBEDDED.partition(":")
    start: Callable[[ChannelConfig], AbstractContextManager[ChannelConfig]]
    start = getattr(importlib.import_module(module), name)
    return start(config)


@contextlib.contextmanager
def resolve(config: ChannelConfig, *, embed: bool) -> Iterator[ChannelConfig]:
    """``config`` when it reaches a server; else, with ``embed``, a server started here for as
    long as the context lasts, or :class:`NoServer`. Every caller decides "embedded or
    configured" through this (the CLI, a run's coordinator, the functions)."""
    if configured(config):
        yield config
    elif not embed:
        raise NoServer(config.kind, transport(config.kind).SERVER)
    else:
        with embedded(config) as started:
            yield started


def embedded_note() -> str:
    """What ``fsd run --help`` says of the servers it starts: those of the transports whose
    server is in :mod:`fsd.embedded` (the ``embedded`` extra), and what configures one instead."""
    started = [k for k in TRANSPORTS if transport(k).EMBEDDED.startswith("fsd.embedded.")]
    where = "; ".join(f"{k}: {transport(k).SERVER}" for k in started)
    names = (
        ", ".join(started[:-1]) + f" and {started[-1]}" if len(started) > 1 else "".join(started)
    )
    text = (
        f"Without a server configured ({where}), {names} start an embedded server, which needs "
        "the extra: pip install 'fsd[embedded]'."
    )
    return textwrap.fill(text, width=96, break_on_hyphens=False) + "\n"


def options_class(kind: str) -> type[TransportOptions]:
    """The options ``kind`` declares (:attr:`Channel.OPTIONS`)."""
    return transport(kind).OPTIONS


def stacked() -> tuple[str, ...]:
    """The remote transports whose server a stack runs (:attr:`Channel.STACK`): the one-machine
    stack's and the chart's, so the operator's (``spec.channel``, ``FSD_CHANNELS``)."""
    return tuple(k for k in REMOTE_CHANNELS if transport(k).STACK)


def cluster_variables() -> tuple[Variable, ...]:
    """What the operator reads for the servers of the transports a stack runs
    (:attr:`TransportOptions.CLUSTER`), each once."""
    found: dict[str, Variable] = {}
    for kind in stacked():
        for var in options_class(kind).CLUSTER:
            found.setdefault(var.name, var)
    return tuple(found.values())


def cluster_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the operator gives its functions for those servers, from its own ``env``
    (:meth:`TransportOptions.cluster_env`)."""
    found: dict[str, str] = {}
    for kind in stacked():
        found.update(options_class(kind).cluster_env(env))
    return found


def cluster_secrets() -> tuple[str, ...]:
    """The secret files the operator's functions mount for those transports unless told
    otherwise (:attr:`TransportOptions.CLUSTER_SECRETS`)."""
    return tuple(dict.fromkeys(s for k in stacked() for s in options_class(k).CLUSTER_SECRETS))


def variables() -> tuple[Variable, ...]:
    """Every variable the transports read, each once (the first transport declaring it wins)."""
    found: dict[str, Variable] = {}
    for kind in TRANSPORTS:
        for var in options_class(kind).VARIABLES:
            found.setdefault(var.name, var)
    return tuple(found.values())


def flags() -> tuple[Variable, ...]:
    """The transports' CLI flags (``--nats-url``...), each once, in registry order."""
    return tuple(v for v in variables() if v.flag)


def own_settings() -> tuple[str, ...]:
    """What only a function's own configuration may say of its transport (an invocation body
    naming one is refused): where and how to connect, every transport's options included."""
    common = ("address", "namespace", "secret")
    own = {f.name for kind in TRANSPORTS for f in dataclasses.fields(options_class(kind))}
    return common + tuple(sorted(own))


__all__ = [
    "CHANNELS",
    "COORDINATOR",
    "DEPLOYED",
    "REMOTE_CHANNELS",
    "TRANSPORTS",
    "Channel",
    "ChannelConfig",
    "ChannelStats",
    "NoServer",
    "TransportOptions",
    "cluster_env",
    "cluster_secrets",
    "cluster_variables",
    "configured",
    "embedded",
    "embedded_note",
    "flags",
    "open_channel",
    "options_class",
    "own_settings",
    "resolve",
    "stacked",
    "transport",
    "variables",
]
