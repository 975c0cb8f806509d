"""A transport with options of its own that exists only in tests: its flag, its secret file and
its option names must reach the CLI, the functions' secret files and the invocation checks by
its one registry line (tests/cli/test_settings.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from fsd import settings
from fsd.channels.base import ChannelConfig, TransportOptions
from fsd.channels.local import LocalChannel
from fsd.settings import Variable


@dataclass(frozen=True)
class ToyOptions(TransportOptions):
    password: str = field(default="", repr=False)
    toy_queue: str = ""

    ADDRESS = "FSD_TOY_URL"
    VARIABLES = (
        Variable("FSD_TOY_URL", "the toy server", flag="--toy-url", flag_help="toy server URL"),
        Variable("FSD_TOY_PASSWORD", "the toy's password", secret=True, secret_file="fsd-toy"),
    )


class OptionedChannel(LocalChannel):
    SERVER = "--toy-url or FSD_TOY_URL"
    OPTIONS = ToyOptions

    @classmethod
    def settings(
        cls, config: ChannelConfig, env: Mapping[str, str], flags: Mapping[str, str]
    ) -> ChannelConfig:
        address = flags.get("toy_url") or settings.text(env, "FSD_TOY_URL")
        own = ToyOptions(password=settings.text(env, "FSD_TOY_PASSWORD"))
        return dataclasses.replace(config, address=address, options=own)
