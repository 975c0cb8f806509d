"""The registries: one entry names a transport or a platform, and everything else follows from
its class (a transport's settings, embedded server, counted operations, billing; a platform's
options and how it is made), with nothing else to edit."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fsd
from fsd import channels, launch
from fsd.channels import CHANNELS, REMOTE_CHANNELS, TRANSPORTS, transport
from fsd.channels.base import Channel
from fsd.coordinator import RunConfig, _counted_ops, run
from fsd.errors import InputError, WorkerError
from fsd.functions import coordinator as coordinator_fn
from fsd.functions.config import NotConfigured, own_channels
from fsd.launch import PLATFORMS, Launcher, LauncherOptions, RemoteLauncher
from fsd.model.generate import generate
from platform_stands import IMAGES, MODEL, STANDS, TRUTH, Stand
from test_launcher_conformance import CHECKS


def test_every_entry_is_a_channel_with_its_own_declarations() -> None:
    assert tuple(TRANSPORTS) == CHANNELS
    assert set(REMOTE_CHANNELS) == set(CHANNELS) - {"local"}
    for kind in CHANNELS:
        cls = transport(kind)
        assert issubclass(cls, Channel)
        assert cls.SERVER, f"{kind}: say what names its server"
        assert len(set(cls.OPS)) == len(cls.OPS)
        assert all(op.isascii() and "\n" not in op for op in cls.OPS)


def test_an_unknown_channel_is_an_input_error_naming_the_choices() -> None:
    with pytest.raises(InputError, match=r"kafka.*nats"):
        transport("kafka")


def test_a_new_transport_is_its_module_and_one_registry_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transport defined outside fsd runs an inference end to end: the coordinator starts its
    embedded server, the workers report its operation by name, the cost uses its billing."""
    monkeypatch.setitem(channels.TRANSPORTS, "toy", "toy_transport:ToyChannel")  # type: ignore[index]
    network, images = generate(256, 6, 20, seed=3)
    result = run(network, images.matrix, RunConfig(workers=3, channel="toy"))
    expected = run(network, images.matrix, RunConfig(workers=3, channel="local"))
    assert result.categories.tolist() == expected.categories.tolist()
    # every frame of every endpoint, the workers' too, but their RESULTs (which carry the counts)
    drops = result.messages - 3
    assert set(result.ops) == {"drop"} and result.ops["drop"] == drops
    assert result.cost is not None
    assert result.cost.requests["sqs_request"] == 2 * drops


@pytest.mark.parametrize(
    ("names", "counts", "why"),
    [
        (b"send\nreceive", [1], "do not pair"),
        (b"send\nsend", [1, 2], "do not pair"),
        (b"send\nforged", [1, 2], "unknown operation 'forged'"),
        (b"send\xff", [1], "not ASCII"),
        (b"send", [-1], "out of range"),
        (b"send", [1 << 60], "out of range"),
    ],
)
def test_a_workers_counts_are_checked_by_name(names: bytes, counts: list[int], why: str) -> None:
    known = {"send": 0, "receive": 0}
    with pytest.raises(WorkerError, match=why):
        _counted_ops(2, np.frombuffer(names, np.uint8), np.array(counts, np.int64), known)


def test_a_workers_counts_may_come_in_any_order() -> None:
    names = np.frombuffer(b"receive\nsend", np.uint8)
    got = _counted_ops(0, names, np.array([5, 7], np.int64), {"send": 0, "receive": 0})
    assert got == {"send": 7, "receive": 5}


@pytest.mark.parametrize("kind", ["sqs", "sns"])
def test_functions_on_aws_need_no_endpoint_only_credentials(kind: str) -> None:
    """On Lambda, SQS and SNS are AWS's own endpoints (none configured) and the role's keys are
    in the environment; without either, the function says what to set."""
    store = {"FSD_S3_ENDPOINT": "https://s3.us-east-1.amazonaws.com", "FSD_CHANNEL": kind}
    role = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLE", "AWS_SESSION_TOKEN": "t", **store}
    transport_config, _ = own_channels(kind, role)
    assert transport_config.address == ""  # boto3 resolves AWS's endpoint
    with pytest.raises(NotConfigured, match="AWS_ENDPOINT_URL"):
        own_channels(kind, store)


def test_functions_refuse_a_channel_of_one_machine() -> None:
    with pytest.raises(NotConfigured, match="FSD_CHANNEL"):
        own_channels("local", {"FSD_S3_ENDPOINT": "http://s3.test:9000"})


# The platform registry: the same shape as the transports', and a toy platform that plugs in by
# one line and passes the launcher conformance suite (tests/launch/test_launcher_conformance.py).


def test_every_platform_is_a_launcher_with_its_own_options() -> None:
    for kind in PLATFORMS:
        cls = launch.platform(kind)
        assert issubclass(cls, Launcher)
        assert issubclass(cls.Options, LauncherOptions)
        assert dataclasses.is_dataclass(cls.Options)
        assert cls.Options.__dataclass_params__.frozen  # type: ignore[attr-defined]
        assert cls.LOCAL or issubclass(cls, RemoteLauncher), f"{kind}: how are workers invoked?"


def test_an_unknown_platform_is_an_input_error_naming_the_choices() -> None:
    with pytest.raises(InputError, match=r"'k8s'.*local, openfaas, lambda"):
        launch.platform("k8s")
    with pytest.raises(InputError, match=r"'k8s'.*openfaas"):
        RunConfig(platform="k8s").validate(generate(256, 2, 1)[0])


def test_a_platform_refuses_another_platforms_options() -> None:
    other = next(k for k in PLATFORMS if launch.platform(k).Options is not LauncherOptions)
    given = launch.platform(other).Options()
    with pytest.raises(InputError, match=type(given).__name__):
        launch.make_launcher("local", given)


def _code_names(path: Path) -> set[str]:
    """Every identifier and string constant of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.update(node.name.split("."))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            names.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", node.value))
    return names


def test_generic_code_names_no_platform() -> None:
    """What runs workers on any platform (the coordinator, the functions) names none: no
    platform, launcher or options class, module, or variable of a platform's own; only the
    registry does ("local" is also a transport's name, and the engine's default platform)."""
    named: set[str] = set()
    for kind in PLATFORMS:
        cls = launch.platform(kind)
        named |= {kind, cls.__name__, cls.__module__.rsplit(".", 1)[-1], *cls.Options.VARIABLES}
        if cls.Options is not LauncherOptions:
            named.add(cls.Options.__name__)
    named -= {"local"}
    src = Path(fsd.__file__).parent
    generic = ("coordinator.py", "functions/coordinator.py", "functions/worker.py")
    for module in (*generic, "functions/config.py"):
        assert not _code_names(src / module) & named, module


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_a_new_platform_is_its_module_and_one_registry_entry(
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    check: Callable[[str, Stand], None],
) -> None:
    """A platform defined outside fsd passes the launcher conformance suite: its workers run
    the worker function, invoke their children through the registry, refuse forged calls."""
    monkeypatch.setitem(launch.PLATFORMS, "toy", "toy_platform:ToyLauncher")  # type: ignore[index]
    with STANDS["toy"](request) as stand:
        check("toy", stand)


def test_a_new_platform_serves_the_coordinator_function(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The coordinator function on the toy platform (``FSD_LAUNCHER=toy``), workers invoked as
    a fan-out tree: an inference end to end, answered as on any other platform."""
    monkeypatch.setitem(launch.PLATFORMS, "toy", "toy_platform:ToyLauncher")  # type: ignore[index]
    coo = IMAGES.matrix.tocoo()
    inputs = {
        "count": int(IMAGES.matrix.shape[0]),
        "rows": (coo.row + 1).tolist(),
        "cols": (coo.col + 1).tolist(),
        "values": coo.data.tolist(),
    }
    body = json.dumps({"model": MODEL, "inputs": inputs}).encode()
    with STANDS["toy"](request):  # the functions' configuration: this process's environment
        status, reply = coordinator_fn.handle_request(body, {**os.environ, "FSD_FANOUT": "1"})
    assert status == 200, reply
    assert reply["categories"] == TRUTH.tolist()


def test_every_platform_module_is_in_the_independence_contract() -> None:
    """pyproject.toml's import-linter contract keeps platforms from importing each other: it
    must list every registered platform's module."""
    pyproject = tomllib.loads((Path(fsd.__file__).parents[2] / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == "Launchers are independent of each other"]
    assert set(contract["modules"]) == {PLATFORMS[k].partition(":")[0] for k in PLATFORMS}
