"""``fsd invoke`` through an OpenFaaS gateway (the :class:`fsd.invoke.Client` of OpenFaaS).

The gateway routes ``POST <gateway>/function/<name>`` to the function and checks HTTP basic auth
(user ``admin`` by default) when it has auth enabled; faas-cli reads the same ``OPENFAAS_URL``.
A password comes only from the environment or a file, never from a flag (shell history, process
listings); the URL carries none either.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import urllib3

from fsd import settings
from fsd.errors import InputError
from fsd.invoke import Target, coordinator_function, read_bounded
from fsd.launch.openfaas import GATEWAY_USER
from fsd.settings import Variable
from fsd.urls import shown

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
"""The gateway from a laptop: faas-cli's default, a port-forward's address."""
DEFAULT_USER = GATEWAY_USER
#: Largest password file read.
MAX_PASSWORD_BYTES = 4096
_DNS_LABEL_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")

VARIABLES = (
    Variable(
        "OPENFAAS_URL",
        "fsd invoke: the OpenFaaS gateway (or --gateway), as faas-cli reads it",
        default=DEFAULT_GATEWAY,
    ),
    Variable(
        "OPENFAAS_USER",
        "fsd invoke: the gateway's basic-auth user (or --user)",
        default=DEFAULT_USER,
    ),
    Variable(
        "OPENFAAS_PASSWORD",
        "fsd invoke: the gateway's basic-auth password (or --password-file); none: no auth",
        secret=True,
    ),
)
"""What this client reads (:func:`fsd.invoke.variables`); the password is scrubbed from every
message like the rest of the secrets."""

EPILOG = """\
examples:
  fsd invoke --inference-model gc1024 --namespace default --request examples/request.json
  fsd invoke --function gc1024-default-coordinator --workers 4 --json
  OPENFAAS_URL=https://gw.example.com fsd invoke --inference-model gc1024 --images 100

The password of the gateway's basic auth comes from OPENFAAS_PASSWORD or --password-file,
never from a flag. Flags given with --request replace the file's fields.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--gateway``, ``--user``, ``--password-file``."""
    parser.add_argument(
        "--gateway",
        metavar="URL",
        help=f"OpenFaaS gateway (default: env OPENFAAS_URL, else {DEFAULT_GATEWAY})",
    )
    parser.add_argument(
        "--user",
        help=f"gateway basic-auth user (default: env OPENFAAS_USER, else {DEFAULT_USER})",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="file holding the gateway password (default: env OPENFAAS_PASSWORD; none: no auth)",
    )


def target(args: argparse.Namespace, env: Mapping[str, str]) -> Target:
    """The coordinator behind the gateway of ``args`` (flags, else ``OPENFAAS_*``)."""
    found = gateway(args.gateway, args.user, args.password_file, env)
    if args.function is not None:
        function = check_function_name(args.function)
    else:
        function = coordinator_function(args.inference_model, args.namespace)
    return found.target(function)


def check_function_name(name: str) -> str:
    """``name`` or ``name.namespace``: DNS-1123 labels, as OpenFaaS routes them."""
    parts = name.split(".")
    if len(parts) > 2 or not all(_is_label(p) for p in parts):
        raise InputError(
            f"function name {name[:80]!r} is not a DNS-1123 label (a-z, 0-9, '-', at most 63 "
            "characters), optionally followed by .namespace"
        )
    return name


def _is_label(text: str) -> bool:
    return (
        0 < len(text) <= 63 and set(text) <= _DNS_LABEL_CHARS and text[0] != "-" and text[-1] != "-"
    )


@dataclass(frozen=True)
class Gateway:
    """Where the gateway is and how to log in; the password stays out of ``repr``."""

    url: str
    user: str = DEFAULT_USER
    password: str = field(default="", repr=False)

    def function_url(self, function: str) -> str:
        return f"{self.url.rstrip('/')}/function/{check_function_name(function)}"

    def target(self, function: str) -> Target:
        """``function`` behind this gateway, with its basic auth when there is a password."""
        headers = {}
        if self.password:
            headers = urllib3.make_headers(basic_auth=f"{self.user}:{self.password}")
        return Target(
            url=self.function_url(function),
            where=f"{shown(self.url)} function {function}",
            headers=headers,
            secret=self.password,
            refused=(
                f"the gateway refused user {self.user!r}: set OPENFAAS_PASSWORD or --password-file"
            ),
        )


def gateway(
    url: str | None,
    user: str | None,
    password_file: Path | None,
    env: Mapping[str, str],
) -> Gateway:
    """The gateway from flags, else ``OPENFAAS_URL``, ``OPENFAAS_USER``, ``OPENFAAS_PASSWORD``."""
    source = "--gateway" if url else "OPENFAAS_URL"
    address = url or settings.text(env, "OPENFAAS_URL", DEFAULT_GATEWAY)
    _check_url(address, source)
    name = user or settings.text(env, "OPENFAAS_USER", DEFAULT_USER)
    if not name.isprintable() or ":" in name or len(name) > 256:
        raise InputError("the gateway user must be printable, without ':', at most 256 characters")
    if password_file is not None:
        password = _read_password(password_file)
    else:
        password = settings.text(env, "OPENFAAS_PASSWORD")
    return Gateway(address, name, password)


def _check_url(address: str, source: str) -> None:
    if any(not c.isprintable() or c.isspace() for c in address):
        raise InputError(f"{source} has spaces or control characters: {shown(address)}")
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        raise InputError(f"{source} is not a valid URL: {shown(address)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise InputError(f"{source} must be http(s)://host[:port][/path]: {shown(address)}")
    if "@" in parts.netloc:
        raise InputError(
            f"{source} must not hold credentials (use OPENFAAS_PASSWORD or --password-file): "
            f"{shown(address)}"
        )
    if parts.query or parts.fragment:
        raise InputError(f"{source} must not have a query or fragment: {shown(address)}")


def _read_password(path: Path) -> str:
    what = f"the password file {path}"
    try:
        password = read_bounded(path, MAX_PASSWORD_BYTES, what).decode().strip()
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text") from None
    if not password:
        raise InputError(f"{what} is empty")
    return password
