"""Channel configuration from flags and the environment, the same for the CLI and the functions.

Flags win over environment variables. Secrets come only from the environment (or files that
platforms mount, read by the functions), never from flags, so they stay out of shell history and
process listings. Each transport reads its own variables (its class's ``settings`` and
``OPTIONS``, see :class:`fsd.channels.base.Channel`); :mod:`fsd.variables` assembles every
declaration and docs/configuration.md lists them. Addresses are checked before any connection,
with the rules of :mod:`fsd.urls`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fsd.auth import load_secret
from fsd.channels import flags as transport_flags
from fsd.channels import transport
from fsd.channels.base import ChannelConfig
from fsd.errors import AuthError, InputError
from fsd.settings import run_key


def channel_config(
    kind: str,
    *,
    env: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
    base: ChannelConfig | None = None,
) -> ChannelConfig:
    """The configuration for ``kind``; an empty address means "start an embedded server".

    ``flags`` maps a transport flag's destination (``nats_url`` for ``--nats-url``) to what was
    given (argparse's namespace as a dict will do: other keys are ignored). What is common (the
    run key) is read here; the rest by the transport's own
    :meth:`fsd.channels.base.Channel.settings`.
    """
    cls = transport(kind)
    cfg = dataclasses.replace(base or ChannelConfig(), kind=kind)
    key = run_key(env)
    if key:
        try:
            cfg = dataclasses.replace(cfg, secret=load_secret(key))
        except AuthError as exc:
            raise InputError(str(exc)) from None
    given = flags or {}
    chosen = {v.dest: given.get(v.dest) for v in transport_flags()}
    return cls.settings(cfg, env, {k: v for k, v in chosen.items() if isinstance(v, str) and v})
