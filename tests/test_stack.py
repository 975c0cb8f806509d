"""stack.yml, the OpenFaaS deployment of fsd: its fields, the files it names, and its timeouts.

Field names follow faas-cli's stack schema (docs.openfaas.com/reference/yaml). There is no
faas-cli nor cluster here, so this checks what can go wrong before either is reached: a typo in a
field, a folder or template that does not exist, a secret nobody documented or reads, and a timeout
chain that would cut a run short.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from fsd.settings import CREDS_FILE, SECRET_VARS

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "stack.yml"
DOCS = ROOT / "docs" / "deploy-openfaas.md"
FUNCTIONS = ("coordinator", "worker")

# faas-cli's stack.Function fields (its YAML names)
FUNCTION_FIELDS = {
    "lang",
    "handler",
    "image",
    "fprocess",
    "environment",
    "environment_file",
    "secrets",
    "skip_build",
    "constraints",
    "labels",
    "annotations",
    "limits",
    "requests",
    "readonly_root_filesystem",
    "build_options",
    "build_args",
    "namespace",
    "platforms",
}
TOP_FIELDS = {"version", "provider", "functions", "configuration"}
TIMEOUTS = ("exec_timeout", "read_timeout", "write_timeout")


def seconds(value: object) -> float:
    """A watchdog timeout: a Go duration (``5m2s``, ``300s``) or a bare number of seconds."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def memory_bytes(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", value)
    assert match, f"not a Kubernetes memory quantity: {value!r}"
    power = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}.get(match.group(2) or "", 0)
    return float(match.group(1)) * 1024.0**power


def cpu_cores(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", value)
    assert match, f"not a Kubernetes cpu quantity: {value!r}"
    return float(match.group(1)) / (1000.0 if match.group(2) else 1.0)


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    data = yaml.safe_load(STACK.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def docs() -> str:
    return DOCS.read_text()


def function(stack: dict[str, Any], name: str) -> dict[str, Any]:
    spec = stack["functions"][name]
    assert isinstance(spec, dict)
    return spec


def test_header(stack: dict[str, Any]) -> None:
    assert set(stack) <= TOP_FIELDS
    assert str(stack["version"]) == "1.0"
    assert stack["provider"] == {
        "name": "openfaas",
        "gateway": "${OPENFAAS_URL:-http://127.0.0.1:8080}",
    }
    assert set(stack["functions"]) == set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fields_are_faas_cli_fields(stack: dict[str, Any], name: str) -> None:
    spec = function(stack, name)
    assert set(spec) <= FUNCTION_FIELDS, set(spec) - FUNCTION_FIELDS
    # environment, labels and annotations are map[string]string in faas-cli
    for key in ("environment", "labels", "annotations"):
        for k, v in spec.get(key, {}).items():
            assert isinstance(v, str), f"{name}.{key}.{k} must be a string, got {v!r}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_handler_folder_exists(stack: dict[str, Any], name: str) -> None:
    handler = function(stack, name)["handler"]
    assert handler == f"./functions/{name}"
    folder = ROOT / handler
    assert folder.is_dir(), f"{handler} does not exist"
    assert (folder / "handler.py").is_file(), f"{handler}/handler.py does not exist"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_lang_is_a_local_template(stack: dict[str, Any], name: str) -> None:
    lang = function(stack, name)["lang"]
    folder = ROOT / "template" / lang
    assert (folder / "Dockerfile").is_file()
    assert (folder / "template.yml").is_file()
    assert (folder / "index.py").is_file()
    assert yaml.safe_load((folder / "template.yml").read_text())["language"] == lang
    # listed in configuration.templates without a source: nothing to pull
    templates = {t["name"]: t for t in stack["configuration"]["templates"]}
    assert lang in templates
    assert "source" not in templates[lang]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_image(stack: dict[str, Any], name: str) -> None:
    """A local default (fsd.local: nothing answers to it, so nothing is pushed by default) or
    REGISTRY, which the user names: never an anonymous public registry anyone can push over
    (issue 10, item 8). OpenFaaS CE deploys only images it can pull anonymously, so a deployment
    does name one (tests/test_docs.py checks the pages push there)."""
    assert function(stack, name)["image"] == f"${{REGISTRY:-fsd.local}}/fsd-{name}:latest"


def test_no_public_registry_default(docs: str) -> None:
    assert "ttl.sh" not in (ROOT / "stack.yml").read_text()
    assert "REGISTRY=ttl.sh" not in docs  # the page's example is a registry of the reader's
    # the page says what happens without REGISTRY, and how to set one for pushing
    assert "fsd.local" in docs and "export REGISTRY=" in docs


def test_copy_paths_exist_and_reach_the_dockerfile(stack: dict[str, Any]) -> None:
    copy = stack["configuration"]["copy"]
    assert copy == ["./src", "./pyproject.toml", "./README.md"]
    langs = {function(stack, name)["lang"] for name in FUNCTIONS}
    for path in copy:
        assert not Path(path).is_absolute() and ".." not in Path(path).parts
        assert (ROOT / path).exists(), f"{path} does not exist"
        # faas-cli copies extra paths into the handler folder of the build context (function/)
        for lang in langs:
            dockerfile = (ROOT / "template" / lang / "Dockerfile").read_text()
            assert f"function/{Path(path).as_posix()}" in dockerfile


@pytest.mark.parametrize("name", FUNCTIONS)
def test_environment(stack: dict[str, Any], name: str) -> None:
    env = function(stack, name)["environment"]
    assert env["FSD_NATS_URL"].startswith("nats://")
    assert env["FSD_S3_ENDPOINT"].startswith("http")
    assert env["FSD_S3_BUCKET"] == "fsd"
    # both invoke workers: the coordinator always, workers as inner nodes of a fan-out tree
    assert env["FSD_WORKER_URL"] == "http://gateway.openfaas:8080/function/worker"
    if name == "worker":
        assert int(env["max_inflight"]) >= 1
    else:
        assert int(env["FSD_FANOUT"]) >= 1


@pytest.mark.parametrize("name", FUNCTIONS)
def test_secrets_documented_and_read(stack: dict[str, Any], docs: str, name: str) -> None:
    secrets = function(stack, name)["secrets"]
    assert secrets, f"{name} lists no secrets"
    assert len(secrets) == len(set(secrets))
    known = {*SECRET_VARS, CREDS_FILE}
    for secret in secrets:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", secret), secret
        assert secret in known, f"fsd.settings does not read {secret}"
        assert f"faas-cli secret create {secret} " in docs, f"{secret} is not in {DOCS.name}"
    assert "fsd-gateway-password" in secrets  # both call the gateway


@pytest.mark.parametrize("name", FUNCTIONS)
def test_watchdog_timeouts_consistent(stack: dict[str, Any], name: str) -> None:
    env = function(stack, name)["environment"]
    exec_t, read_t, write_t = (seconds(env[key]) for key in TIMEOUTS)
    assert 0 < exec_t <= read_t
    assert exec_t <= write_t
    # index.py's shutdown: serve while the watchdog still accepts, then drain up to write_timeout
    assert float(env["FSD_SHUTDOWN_DELAY_SECONDS"]) <= seconds(env["healthcheck_interval"])
    assert float(env["FSD_DRAIN_SECONDS"]) >= write_t


def test_coordinator_outlasts_its_workers(stack: dict[str, Any]) -> None:
    coordinator = function(stack, "coordinator")["environment"]
    worker = function(stack, "worker")["environment"]
    assert seconds(coordinator["exec_timeout"]) > seconds(worker["write_timeout"])


def test_gateway_timeouts_in_the_docs_cover_the_functions(stack: dict[str, Any], docs: str) -> None:
    def helm(key: str) -> float:
        values = set(re.findall(rf"--set {re.escape(key)}=(\S+)", docs))
        assert len(values) == 1, f"{key}: {values or 'not set'} in {DOCS.name}"
        return seconds(values.pop())

    upstream = helm("gateway.upstreamTimeout")
    for name in FUNCTIONS:
        env = function(stack, name)["environment"]
        assert upstream >= seconds(env["exec_timeout"]), name
    for key in (
        "gateway.readTimeout",
        "gateway.writeTimeout",
        "faasnetes.readTimeout",
        "faasnetes.writeTimeout",
    ):
        assert helm(key) > upstream, key


@pytest.mark.parametrize(("name", "low", "high"), [("coordinator", 1, 8), ("worker", 4, 64)])
def test_scaling_labels(stack: dict[str, Any], name: str, low: int, high: int) -> None:
    labels = function(stack, name)["labels"]
    assert int(labels["com.openfaas.scale.min"]) == low
    assert int(labels["com.openfaas.scale.max"]) == high


@pytest.mark.parametrize("name", FUNCTIONS)
def test_limits_and_requests(stack: dict[str, Any], name: str) -> None:
    spec = function(stack, name)
    limits, requests = spec["limits"], spec["requests"]
    assert set(limits) == set(requests) == {"memory", "cpu"}
    assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"])
    assert cpu_cores(requests["cpu"]) <= cpu_cores(limits["cpu"])


def test_docs_deploy_with_this_stack(docs: str) -> None:
    assert "faas-cli up -f stack.yml" in docs
    assert "not run" in docs  # says plainly that none of it ran here
    for name in FUNCTIONS:
        assert f"functions/{name}" in docs


def test_functions_serve_named_models_within_consistent_limits(stack: dict[str, Any]) -> None:
    """Both functions serve named models only, and the workers accept what the coordinator
    sends them: its fan-out, worker and image counts, and layer timeout."""
    from fsd.functions.config import Limits, ModelFilter

    coordinator = function(stack, "coordinator")["environment"]
    worker = function(stack, "worker")["environment"]
    assert coordinator["FSD_MODELS"] == worker["FSD_MODELS"]
    assert "*" not in coordinator["FSD_MODELS"]
    request = json.loads((ROOT / "examples" / "request.json").read_text())
    served = ModelFilter.from_env(coordinator)
    assert served.allows(request.get("model") or str(served.only))  # one model: no need to name it
    c, w = Limits.from_env(coordinator), Limits.from_env(worker)  # both parse
    assert c.fanout <= w.fanout
    assert c.max_workers <= w.max_workers and c.max_images <= w.max_images
    assert min(c.layer_timeout, c.max_timeout) <= w.max_timeout
    assert c.max_timeout < seconds(coordinator["exec_timeout"])
    assert w.max_timeout <= seconds(worker["exec_timeout"])


def test_docs_link_the_worker_invocation_schema() -> None:
    shipped = ROOT / "src" / "fsd" / "functions" / "invocation.schema.json"
    assert (ROOT / "docs" / "api" / "invocation.schema.json").read_text() == shipped.read_text()
    assert "api/invocation.schema.json" in (ROOT / "docs" / "api.md").read_text()
    assert "faas-cli secret create fsd-run-key " in DOCS.read_text()
