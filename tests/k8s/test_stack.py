"""stack.yml, the OpenFaaS deployment of fsd: its fields, the files it names, and its timeouts.

Field names follow faas-cli's stack schema (docs.openfaas.com/reference/yaml). There is no
faas-cli nor cluster here, so this checks what can go wrong before either is reached: a typo in a
field, a folder or template that does not exist, a secret nobody documented or reads, and a timeout
chain that would cut a run short.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml  # type: ignore[import-untyped]

from fsd.variables import PATH_FILES, SECRET_VARS
from k8s_gateway import CE_MAX_FUNCTIONS, CE_MAX_REPLICAS, FUNCTION_DEPLOYMENT, FakeGateway
from paths import ROOT

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
    does name one (tests/docs/test_docs.py checks the pages push there)."""
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
    # faas-cli copies extra paths into the handler folder of the build context (function/); the
    # Dockerfile copies that folder whole and installs it as a project when pyproject.toml came
    for lang in langs:
        dockerfile = (ROOT / "template" / lang / "Dockerfile").read_text()
        assert "COPY --chown=app:app function/ ./function/" in dockerfile
        assert "if [ -f function/pyproject.toml ]" in dockerfile


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
    known = {*SECRET_VARS, *PATH_FILES}
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
    # index.py's shutdown: serve on 2 s past the moment of-watchdog stops accepting
    # (healthcheck_interval after SIGTERM: of-watchdog pkg/watchdog.go listenUntilShutdown), so
    # nothing it still forwards meets a closed listener; then drain up to write_timeout
    interval = seconds(env["healthcheck_interval"])
    assert float(env["FSD_SHUTDOWN_DELAY_SECONDS"]) == interval + 2
    assert float(env["FSD_DRAIN_SECONDS"]) >= write_t


@pytest.mark.parametrize("name", FUNCTIONS)
def test_timeouts_are_the_operators(stack: dict[str, Any], name: str) -> None:
    """stack.yml and the operator (fsd.k8s.desired) give a function the same timeout chain:
    one value each, not two that drift apart."""
    from fsd.k8s import openfaas
    from fsd.k8s.config import OperatorConfig
    from fsd.k8s.spec import parse_spec

    model = yaml.safe_load((ROOT / "examples" / "inferencemodel-gc1024.yaml").read_text())
    config = OperatorConfig.from_env({"FSD_S3_ENDPOINT": "http://s3.fsd:9000"})
    operator = openfaas.function_deployment(
        name,
        name="gc1024",
        namespace="default",
        spec=parse_spec(model["spec"]),
        config=config,
        store_model="default.gc1024",
    )["envVars"]
    env = function(stack, name)["environment"]
    for key in (*TIMEOUTS, "healthcheck_interval", "FSD_MAX_TIMEOUT", "FSD_DRAIN_SECONDS"):
        assert env[key] == operator[key], key


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


@pytest.fixture(scope="module")
def ce_gateway() -> Iterator[FakeGateway]:
    """The stand-in gateway with OpenFaaS CE's rules (tests/k8s/k8s_gateway.py, each rule citing
    faas-netes), holding the secrets stack.yml names: what is checked is CE's rules alone."""
    gateway = FakeGateway().start()
    gateway.secrets.update({name: "x" * 32 for name in (*SECRET_VARS, *PATH_FILES)})
    yield gateway
    gateway.stop()


def deployment(stack: dict[str, Any], name: str) -> dict[str, Any]:
    """The FunctionDeployment faas-cli sends for a stack.yml function (faas-cli
    proxy/deploy.go: environment -> envVars, the images' ${REGISTRY} at its default)."""
    spec = function(stack, name)
    return {
        "service": name,
        "image": spec["image"].replace("${REGISTRY:-fsd.local}", "fsd.local"),
        "envVars": spec["environment"],
        "labels": spec["labels"],
        "annotations": spec["annotations"],
        "secrets": spec["secrets"],
        "limits": spec["limits"],
        "requests": spec["requests"],
    }


@pytest.mark.parametrize("name", FUNCTIONS)
def test_openfaas_ce_accepts_the_functions(
    stack: dict[str, Any], ce_gateway: FakeGateway, name: str
) -> None:
    """``faas-cli up -f stack.yml`` on CE: faas-netes refuses com.openfaas.scale.min/max above
    5 (pkg/handlers/validate.go validateScalingLabels, MaxReplicas), among its other rules."""
    body = deployment(stack, name)
    jsonschema.validate(body, FUNCTION_DEPLOYMENT)  # the gateway API's types
    assert ce_gateway.invalid_deployment(body) == ""
    assert len(FUNCTIONS) <= CE_MAX_FUNCTIONS


def test_workers_fit_on_ce_replicas(stack: dict[str, Any]) -> None:
    """Every worker of a run the functions accept (FSD_MAX_WORKERS) runs at once: a worker
    invocation waits for its peers' activations, so one left queued (429 beyond of-watchdog's
    max_inflight, or waiting for a waitress thread) stalls the run until its layer timeout.
    CE allows 5 replicas, so a replica takes ceil(W / 5) invocations, and index.py serves
    them with max_inflight + 2 threads (health checks and /metrics keep theirs)."""
    worker = function(stack, "worker")
    env = worker["environment"]
    inflight = int(env["max_inflight"])
    low = int(worker["labels"]["com.openfaas.scale.min"])
    high = int(worker["labels"]["com.openfaas.scale.max"])
    assert low <= high <= CE_MAX_REPLICAS
    for name in FUNCTIONS:
        most = int(function(stack, name)["environment"]["FSD_MAX_WORKERS"])
        assert inflight >= math.ceil(most / CE_MAX_REPLICAS), name
        assert low * inflight >= most, name  # replicas made up front (faas-netes deploy.go)
    assert int(env["FSD_THREADS"]) == inflight + 2


@pytest.mark.parametrize(("name", "low", "high"), [("coordinator", 1, 5), ("worker", 5, 5)])
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
    assert c.max_timeout <= w.max_timeout  # a worker runs the whole inference it is part of
    assert c.max_timeout < seconds(coordinator["exec_timeout"])
    assert w.max_timeout <= seconds(worker["exec_timeout"])


def test_docs_link_the_worker_invocation_schema() -> None:
    shipped = ROOT / "src" / "fsd" / "functions" / "invocation.schema.json"
    assert (ROOT / "docs" / "api" / "invocation.schema.json").read_text() == shipped.read_text()
    assert "api/invocation.schema.json" in (ROOT / "docs" / "api.md").read_text()
    assert "faas-cli secret create fsd-run-key " in DOCS.read_text()


def _section(path: Path, heading: str) -> str:
    """The text of ``path`` under the level-2 heading that starts with ``heading``."""
    text = path.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_teardown_removes_the_function_secrets(stack: dict[str, Any]) -> None:
    """The functions' secrets live in the function namespace, where neither removing the
    functions, nor deleting namespace fsd, nor uninstalling OpenFaaS takes them: both pages'
    teardown removes each one (faas-cli secret remove takes one name at a time)."""
    from fsd.k8s.config import DEFAULT_SECRETS

    teardown = _section(DOCS, "Tearing down")
    for name in FUNCTIONS:
        for secret in function(stack, name)["secrets"]:
            assert f"faas-cli secret remove {secret}\n" in teardown, secret
    uninstall = _section(ROOT / "docs" / "deploy-kubernetes.md", "10. Uninstall")
    removal = re.search(r"^kubectl -n openfaas-fn delete secret (.+)$", uninstall, re.M)
    assert removal, "step 10 does not remove the functions' secrets from openfaas-fn"
    assert set(removal.group(1).split()) == set(DEFAULT_SECRETS)
