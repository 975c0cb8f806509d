"""A function's timeouts against of-watchdog's ``exec_timeout``, and its numbers parsed strictly.

The watchdog cuts a request at ``exec_timeout`` with a bare 502/504 that is not the API's JSON;
a function must therefore never accept a timeout it cannot keep, and say so in JSON itself.
No server is needed: every refusal here happens before any side effect.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fsd.functions import coordinator
from fsd.functions.config import Limits, NotConfigured, exec_timeout
from paths import ROOT

RUN_KEY = "k" * 48


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "FSD_SECRETS_DIR": str(tmp_path),
        "FSD_RUN_KEY": RUN_KEY,
        "FSD_MODELS": "gc1024",
    } | extra


def request(**fields: object) -> bytes:
    return json.dumps(
        {"model": "gc1024", "workers": 4, "images": {"stored": True}} | fields
    ).encode()


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("310s", 310.0),
        ("5m", 300.0),
        ("1m30s", 90.0),
        ("310", 310.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("0", None),
        ("0s", None),
        ("", None),
    ],
)
def test_exec_timeout_as_the_watchdog_reads_it(raw: str, seconds: float | None) -> None:
    assert exec_timeout({"exec_timeout": raw}) == seconds


@pytest.mark.parametrize("raw", ["5 minutes", "-5s", "1e3s", "s", "310 s", "0x10", "nan", "inf"])
def test_exec_timeout_the_watchdog_would_replace_is_refused(raw: str) -> None:
    with pytest.raises(NotConfigured, match="exec_timeout"):
        Limits.from_env({"exec_timeout": raw})


def test_max_timeout_at_the_watchdogs_limit_is_refused() -> None:
    with pytest.raises(NotConfigured, match=r"FSD_MAX_TIMEOUT \(300 s\).*exec_timeout \(300 s\)"):
        Limits.from_env({"exec_timeout": "300s", "FSD_MAX_TIMEOUT": "300"})
    with pytest.raises(NotConfigured, match="exec_timeout"):
        Limits.from_env({"exec_timeout": "4s"})  # no time left for any request
    assert Limits.from_env({"exec_timeout": "300s", "FSD_MAX_TIMEOUT": "295"}).max_timeout == 295


def test_unset_timeouts_fit_under_the_watchdog() -> None:
    limits = Limits.from_env({"exec_timeout": "1m"})
    assert limits.max_timeout == 55.0
    assert limits.timeout == 55.0  # FSD_TIMEOUT's default, lowered to fit
    assert Limits.from_env({"exec_timeout": "310s"}).max_timeout == 300.0  # the default fits
    assert Limits.from_env({}).timeout == 120.0


@pytest.mark.parametrize("raw", ["1_0", "1e2", "\u0661\u0662\u0660", "12.", " +5"])
def test_seconds_are_plain_decimals(raw: str) -> None:
    with pytest.raises(NotConfigured, match="FSD_TIMEOUT"):
        Limits.from_env({"FSD_TIMEOUT": raw})


def test_a_request_beyond_the_watchdog_gets_a_json_400(tmp_path: Path) -> None:
    status, reply = coordinator.handle_request(
        request(timeout=100), env_for(tmp_path, exec_timeout="60s")
    )
    assert (status, reply["error"]) == (400, "invalid request"), reply
    assert "timeout: 100 s > 55 s" in reply["detail"]


@pytest.mark.parametrize(
    ("extra", "mention"),
    [
        ({"exec_timeout": "5 minutes"}, "exec_timeout must be"),
        ({"exec_timeout": "300s", "FSD_MAX_TIMEOUT": "300"}, "under the watchdog's exec_timeout"),
        ({"FSD_TIMEOUT": "1_0"}, "FSD_TIMEOUT"),
    ],
)
def test_a_timeout_misconfiguration_is_a_json_503(
    tmp_path: Path, extra: dict[str, str], mention: str
) -> None:
    status, reply = coordinator.handle_request(request(), env_for(tmp_path, **extra))
    assert (status, reply["error"]) == (503, "not configured"), reply
    assert mention in reply["detail"]


WATCHDOG = {"fprocess": "python index.py"}  # what of-watchdog starts the function from


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "template/fsd-python3-http/Dockerfile").read_text()
    return {m[0]: m[1] for m in re.findall(r'^ENV (\w+)="?([^"\n]*)"?$', text, re.MULTILINE)}


@pytest.mark.parametrize("process", [WATCHDOG, {"function_process": "python index.py"}])
def test_unset_exec_timeout_under_the_watchdog_is_its_default(process: dict[str, str]) -> None:
    """of-watchdog cuts a request at 30 s when exec_timeout is unset or unreadable as a value
    (config/config.go New: defaultTimeout, getDuration): the function's timeouts fit under it."""
    assert exec_timeout(process) == 30.0
    assert exec_timeout(process | {"exec_timeout": ""}) == 30.0  # set but empty: the default
    assert exec_timeout(process | {"exec_timeout": "0"}) is None  # explicitly none
    limits = Limits.from_env(process)
    assert (limits.max_timeout, limits.timeout) == (25.0, 25.0)
    with pytest.raises(NotConfigured, match=r"FSD_MAX_TIMEOUT \(300 s\).*exec_timeout \(30 s\)"):
        Limits.from_env(process | {"FSD_MAX_TIMEOUT": "300"})


def test_the_template_image_runs_under_the_watchdog() -> None:
    """The image sets fprocess and leaves exec_timeout to each function's deployment: an image
    deployed without one gets the watchdog's 30 s, and this says so."""
    env = dockerfile_env()
    assert "exec_timeout" not in env
    assert exec_timeout(env) == 30.0


def test_unset_exec_timeout_without_the_watchdog_is_no_limit() -> None:
    """fsd.localstack and tests run index.py with nothing in front: no 30 s cut there."""
    assert exec_timeout({}) is None
    assert Limits.from_env({}).max_timeout == 300.0


def test_a_request_beyond_the_watchdogs_default_gets_a_json_400(tmp_path: Path) -> None:
    status, reply = coordinator.handle_request(request(timeout=100), env_for(tmp_path, **WATCHDOG))
    assert (status, reply["error"]) == (400, "invalid request"), reply
    assert "timeout: 100 s > 25 s" in reply["detail"]
