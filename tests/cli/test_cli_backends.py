"""What the CLI says of the backends comes from their own declarations: the examples of
``fsd run --help`` (``Channel.EXAMPLE``) and the client libraries' loggers it quiets
(``LOGGERS`` on each transport and platform), so adding a backend adds its lines here."""

from __future__ import annotations

import argparse

import pytest

from fsd import cli, launch, stores
from fsd.channels import TRANSPORTS, transport
from fsd.channels.local import LocalChannel


class ToyLoudChannel(LocalChannel):
    """A transport outside fsd whose client library logs under its own name."""

    LOGGERS = ("toylib",)
    EXAMPLE = "TOY_URL=toy://here fsd run --channel toy"


def _run_help() -> str:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run: argparse.ArgumentParser = sub.choices["run"]
    return run.format_help()


def test_every_declared_logger_is_quieted() -> None:
    declared = {
        *(n for k in TRANSPORTS for n in transport(k).LOGGERS),
        *(n for k in launch.PLATFORMS for n in launch.platform(k).LOGGERS),
        *(n for k in stores.STORES for n in stores.backend(k).LOGGERS),
    }
    assert declared  # the transports' client libraries declare theirs
    assert declared | set(cli.THIRD_PARTY_LOGGERS) == set(cli._loggers())


def test_a_new_transport_brings_its_loggers_and_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRANSPORTS, "toy", f"{__name__}:ToyLoudChannel")  # type: ignore[index]
    assert "toylib" in cli._loggers()
    assert ToyLoudChannel.EXAMPLE in cli._transport_examples()


def test_run_examples_are_the_transports_own() -> None:
    """Each example runs on the transport that declares it, and ``fsd run --help`` shows it."""
    text = _run_help()
    examples = [(k, transport(k).EXAMPLE) for k in TRANSPORTS if transport(k).EXAMPLE]
    assert examples
    for kind, example in examples:
        assert f"--channel {kind}" in example, kind
        assert f"  {example}\n" in text, kind
