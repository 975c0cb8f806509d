"""The fsd operator (src/fsd/k8s) running for real: kopf against an emulated Kubernetes API.

- Kubernetes: kmock's in-process API emulator (tests/k8s/k8s_api.py adds what an API server keeps:
  resourceVersion, generation); the tests drive it with the official ``kubernetes`` client.
- OpenFaaS: tests/k8s/k8s_gateway.py, a real HTTP server that validates every request body against
  the gateway API's ``FunctionDeployment`` and answers ``availableReplicas``.
- S3: the session's real SeaweedFS (``s3_server``), holding the model store and source folders.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import jsonschema
import kmock
import kopf
import kubernetes  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from minio import Minio

from fsd.embedded.s3 import S3Server
from fsd.errors import InputError
from fsd.k8s import GROUP, PLURAL, VERSION
from fsd.k8s.access import ModelAccess
from fsd.k8s.config import DEFAULT_SECRETS, OperatorConfig
from fsd.k8s.desired import worker_scale
from fsd.k8s.errors import SourceError
from fsd.k8s.functions import merge_patch
from fsd.k8s.handlers import FINALIZER, register
from fsd.k8s.names import function_name, store_name
from fsd.k8s.openfaas import (
    FUNCTION_GROUP,
    FUNCTION_PLURAL,
    FUNCTION_VERSION,
    OpenFaaSSettings,
    function_deployments,
    function_resource,
    openfaas_settings,
)
from fsd.k8s.spec import parse_spec
from fsd.model import write_images, write_network
from fsd.model.generate import generate
from fsd.store import ModelStore, StoreConfig
from k8s_api import Cluster, add_login, kubeconfig, wait_for
from k8s_gateway import CONFLICT, FakeGateway
from paths import ROOT

CRDS = sorted((ROOT / "charts" / "fsd" / "crds").glob("*.yaml"))
SOURCE_BUCKET = "fsd-src"
REFRESH = 0.3  # the readiness timer's interval here (30 s in production)
SECRET_VALUES = {name: f"value-of-{name}-{'x' * 32}" for name in DEFAULT_SECRETS}

#: The ``Function`` CRD's schema (openfaas/faas-netes artifacts/crds/openfaas.com_functions.yaml,
#: openfaas.com/v1), as JSON Schema; stricter than the CRD: unknown fields are refused.
_STRINGS_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RESOURCES = {
    "type": "object",
    "properties": {"cpu": {"type": "string"}, "memory": {"type": "string"}},
    "additionalProperties": False,
}
FUNCTION_CRD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "openfaas.com/v1"},
        "kind": {"const": "Function"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": _STRINGS_MAP,
            },
        },
        "spec": {
            "type": "object",
            "required": ["name", "image"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "image": {"type": "string", "minLength": 1},
                "handler": {"type": "string"},
                "annotations": _STRINGS_MAP,
                "labels": _STRINGS_MAP,
                "environment": _STRINGS_MAP,
                "constraints": {"type": "array", "items": {"type": "string"}},
                "secrets": {"type": "array", "items": {"type": "string"}},
                "limits": _RESOURCES,
                "requests": _RESOURCES,
                "readOnlyRootFilesystem": {"type": "boolean"},
            },
        },
    },
}


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def challenge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Graph Challenge folder in the official layout (``fsd generate`` writes the same)."""
    root = tmp_path_factory.mktemp("challenge")
    network, images = generate(256, 4, 20)
    write_network(root, network)
    write_images(root, images)
    return root


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server, challenge: Path) -> str:
    """A model pushed to the store the usual way (``fsd model push``), cut for 2 workers."""
    from fsd.model import load_images, load_network

    name = f"pushed-{uuid.uuid4().hex[:8]}"
    network = load_network(challenge, cache=False)
    ModelStore(store_config(s3_server)).push(
        network, name, [2], ["min-comm"], images=load_images(challenge, network.neurons)
    )
    return name


@pytest.fixture
def gateway() -> Iterator[FakeGateway]:
    gw = FakeGateway().start()
    try:
        yield gw
    finally:
        gw.stop()


def store_config(s3: S3Server) -> Any:
    return StoreConfig.from_env(
        {
            "FSD_S3_ENDPOINT": s3.endpoint,
            "FSD_S3_BUCKET": "fsd",
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        },
    )


def secrets_dir(values: dict[str, str] | None = None) -> Path:
    """A folder of the operator's mounted secrets (the chart's credentials Secret), one per name."""
    folder = Path(tempfile.mkdtemp(prefix="fsd-operator-secrets-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # holds test secrets: not left
    for name, value in (values if values is not None else SECRET_VALUES).items():
        (folder / name).write_text(value)
    return folder


def operator_config(s3: S3Server, gateway_url: str, **overrides: Any) -> OperatorConfig:
    """The operator's config; ``overrides`` naming an :class:`OpenFaaSSettings` field go there."""
    own = {f.name for f in dataclasses.fields(OpenFaaSSettings)}
    gateway: dict[str, Any] = {
        "gateway_url": gateway_url,
        "gateway_password": "secret",
        "gateway_timeout": 2.0,
        **{k: v for k, v in overrides.items() if k in own},
    }
    settings: dict[str, Any] = {
        "store": store_config(s3),
        "secrets_dir": str(secrets_dir()),
        "retry_seconds": 0.2,
        "refresh_seconds": REFRESH,
        # what `fsd model push` put in the store (the `pushed` fixture), shared by the admin
        "shared": ModelAccess.parse("*/pushed-*"),
        "platform_options": {"openfaas": OpenFaaSSettings(**gateway)},
        **{k: v for k, v in overrides.items() if k not in own},
    }
    return OperatorConfig(**settings)


def pro_mode(config: OperatorConfig) -> OperatorConfig:
    """``config`` with OpenFaaS in Pro mode."""
    pro = dataclasses.replace(openfaas_settings(config), mode="pro")
    return dataclasses.replace(config, platform_options={"openfaas": pro})


def upload(client: Minio, folder: Path) -> str:
    """Copy ``folder`` to a fresh prefix of the source bucket; its s3:// URL."""
    if not client.bucket_exists(SOURCE_BUCKET):
        client.make_bucket(SOURCE_BUCKET)
    prefix = f"challenge-{uuid.uuid4().hex[:8]}"
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.fput_object(SOURCE_BUCKET, f"{prefix}/{path.relative_to(folder)}", str(path))
    return f"s3://{SOURCE_BUCKET}/{prefix}"


def keys(client: Minio, prefix: str, bucket: str = "fsd") -> list[str]:
    return [o.object_name or "" for o in client.list_objects(bucket, prefix=prefix, recursive=True)]


def model(
    name: str, source: dict[str, Any], workers: int, namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, "workers": workers, **spec},
    }


class Kube:
    """The tests' side of the cluster: the official client against the emulated API."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=cluster.url))
        self.api = kubernetes.client.CustomObjectsApi(api)

    def create(self, body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        self.api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def get(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            found = self.api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cast(dict[str, Any], found))

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict((self.get(name, namespace) or {}).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str, namespace: str = "default") -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def functions(self, namespace: str = "openfaas-fn") -> list[dict[str, Any]]:
        listed = cast(
            dict[str, Any],
            self.api.list_namespaced_custom_object(
                FUNCTION_GROUP, FUNCTION_VERSION, namespace, FUNCTION_PLURAL
            ),
        )
        return [dict(item) for item in listed.get("items", [])]

    def secrets(self, namespace: str = "openfaas-fn") -> dict[str, dict[str, Any]]:
        core = kubernetes.client.CoreV1Api(self.api.api_client)
        listed = core.list_namespaced_secret(namespace)
        return {
            str(item.metadata.name if item.metadata else ""): item.to_dict()
            for item in listed.items
        }

    def wait_status(
        self, name: str, what: str, check: Any, timeout: float = 20.0, namespace: str = "default"
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name, namespace)
            return status if check(status) else None

        result: dict[str, Any] = wait_for(f"{name}: {what}", probe, timeout)
        return result


def refused(gateway: FakeGateway) -> list[tuple[str, str, str]]:
    """The requests the gateway refused, but for a secret two reconciles created at once: the
    operator holds no lock across gateway calls, so the later one's POST meets a 409 and it
    replaces the value instead (the same value, from the same mounted file)."""
    return [r for r in gateway.rejected if r != ("POST", "/system/secrets", CONFLICT)]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def is_ready(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Ready"


@contextmanager
def operator(config: OperatorConfig, *, pro: bool = False, events: bool = False) -> Iterator[Kube]:
    registry = register(kopf.OperatorRegistry(), refresh_every=REFRESH)
    add_login(registry)
    if events:  # kopf posts its Events (tests/k8s/k8s_api.py turns them off by default)

        def post_events(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.posting.level = logging.DEBUG
            settings.posting.loggers = True  # what handlers log, too

        kopf.on.startup(registry=registry)(post_events)

    def prepare(url: str, memo: kopf.Memo) -> None:
        memo["config"] = dataclasses.replace(config, kube_url=url)
        if pro:  # Pro mode keeps the function secrets as Kubernetes Secrets
            assert cluster.api is not None
            cluster.api.resources["v1/secrets"] = kmock.ResourceInfo(
                kind="Secret",
                namespaced=True,
                verbs={"list", "watch", "get", "create", "patch", "delete"},
            )

    cluster = Cluster(registry, kopf.Memo(), with_functions=pro, prepare=prepare)
    cluster.start()
    try:
        yield Kube(cluster)
        assert cluster.alive, "the operator died"
    finally:
        cluster.stop()


# -- the tests -----------------------------------------------------------------------------------


def test_create_deploys_both_functions_and_reports_ready(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    gateway.hold = True  # the functions have no replica available yet
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("alpha", {"model": pushed}, 2, channel="s3"))

        status = kube.wait_status("alpha", "Deploying", lambda s: s.get("phase") == "Deploying")
        assert condition(status, "Ready")["status"] == "False"
        assert condition(status, "Ready")["reason"] == "WaitingForReplicas"
        assert condition(status, "Degraded")["status"] == "False"
        assert status["readyWorkers"] == 0
        assert status["modelName"] == pushed

        gateway.hold = False  # replicas come up: the timer notices
        status = kube.wait_status("alpha", "Ready", is_ready)
        ready = condition(status, "Ready")
        assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
            "True",
            "Ready",
            1,
        )
        assert condition(status, "Degraded")["reason"] == "AsExpected"
        assert status["readyWorkers"] == 1  # ceil(2 workers / max_inflight 4), scaling.min 1
        assert status["observedGeneration"] == 1

        assert refused(gateway) == []
        coordinator, worker = (
            gateway.calls("POST", "alpha-default-coordinator"),
            gateway.calls("POST", "alpha-default-worker"),
        )
        assert len(coordinator) == len(worker) == 1
        env = worker[0]["envVars"]
        assert env["FSD_WORKER_URL"] == "http://gateway.openfaas:8080/function/alpha-default-worker"
        assert env["FSD_CHANNEL"] == "s3"
        assert env["FSD_S3_ENDPOINT"] == s3_server.endpoint
        assert env["max_inflight"] == "4"
        # both serve this model only, and agree on the fan-out the workers accept
        for function in (coordinator[0], worker[0]):
            assert function["envVars"]["FSD_MODELS"] == pushed
            assert function["envVars"]["FSD_FANOUT"] == "16"
            assert "fsd-run-key" in function["secrets"]
        assert coordinator[0]["envVars"]["exec_timeout"] == "310s"
        assert worker[0]["labels"]["com.openfaas.scale.min"] == "1"
        assert worker[0]["labels"]["app.kubernetes.io/managed-by"] == "fsd-operator"
        assert worker[0]["labels"]["fsd.dev/model"] == "alpha"
        assert worker[0]["annotations"]["prometheus.io.scrape"] == "true"
        assert worker[0]["limits"] == worker[0]["requests"] == {"memory": "1Gi", "cpu": "1"}
        assert worker[0]["secrets"] == [
            "fsd-nats-token",
            "fsd-s3-access-key",
            "fsd-s3-secret-key",
            "fsd-gateway-password",
            "fsd-run-key",
        ]
        assert (
            worker[0]["labels"]["fsd.dev/owner-uid"] == (kube.get("alpha") or {})["metadata"]["uid"]
        )

        obj = kube.get("alpha") or {}
        assert FINALIZER in obj["metadata"]["finalizers"]
        assert "kopf" not in obj["status"]  # kopf's progress lives in annotations

        # a function removed behind the operator's back comes back (the timer redeploys it)
        with gateway.lock:
            del gateway.functions["alpha-default-worker"]
        wait_for(
            "the worker redeployed", lambda: len(gateway.calls("POST", "alpha-default-worker")) == 2
        )
        kube.wait_status("alpha", "Ready again", is_ready)
        assert refused(gateway) == []


def test_update_of_workers_recuts_the_model_and_redeploys(
    s3_server: S3Server, gateway: FakeGateway, challenge: Path
) -> None:
    client = s3_server.client()
    url = upload(client, challenge)
    store = ModelStore(store_config(s3_server))
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("beta", {"url": url}, 2, scaling={"min": 1, "max": 8}))
        status = kube.wait_status("beta", "Ready", is_ready)
        assert status["modelName"] == "default.beta"  # <namespace>.<name>
        assert set(store.manifest("default.beta").partitions) == {"2-min-comm"}
        assert keys(client, "models/default.beta/2-min-comm/")

        kube.patch_spec("beta", {"workers": 8, "resources": {"memory": "2Gi", "cpu": "500m"}})
        status = kube.wait_status(
            "beta", "generation 2 Ready", lambda s: s.get("observedGeneration") == 2 and is_ready(s)
        )
        assert status["readyWorkers"] == 2  # ceil(8 / 4)
        assert condition(status, "Ready")["observedGeneration"] == 2

        puts = {b["service"]: b for b in gateway.calls("PUT")}
        assert set(puts) == {"beta-default-coordinator", "beta-default-worker"}
        assert puts["beta-default-worker"]["labels"]["com.openfaas.scale.min"] == "2"
        assert (
            puts["beta-default-worker"]["labels"]["com.openfaas.scale.max"] == "5"
        )  # scaling.max 8, CE cap 5
        assert puts["beta-default-worker"]["limits"] == {"memory": "2Gi", "cpu": "500m"}
        assert puts["beta-default-coordinator"]["labels"]["com.openfaas.scale.max"] == "5"  # CE cap
        assert refused(gateway) == []

        manifest = store.manifest("default.beta")
        assert set(manifest.partitions) == {"8-min-comm"}  # cut again for 8 workers
        cut = keys(client, "models/default.beta/8-min-comm/")
        headers = {k.split("/")[-2] for k in cut if k.endswith("/header.npz")}
        assert headers == {f"worker-{p}" for p in range(8)}  # a shard per worker, per layer
        assert keys(client, "models/default.beta/2-min-comm/") == []  # the old cut is gone


def test_delete_removes_functions_and_the_operators_model(
    s3_server: S3Server, gateway: FakeGateway, challenge: Path, pushed: str
) -> None:
    client = s3_server.client()
    url = upload(client, challenge)
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("gamma", {"url": url}, 2))
        kube.create(model("delta", {"model": pushed}, 2))
        kube.wait_status("gamma", "Ready", is_ready)
        kube.wait_status("delta", "Ready", is_ready)
        assert keys(client, "models/default.gamma/")

        kube.delete("gamma")
        kube.delete("delta")
        wait_for("gamma released by the finalizer", lambda: kube.get("gamma") is None)
        wait_for("delta released by the finalizer", lambda: kube.get("delta") is None)

        for name in (
            "gamma-default-coordinator",
            "gamma-default-worker",
            "delta-default-coordinator",
            "delta-default-worker",
        ):
            assert gateway.calls("DELETE", name)  # (a repeated cleanup gets a 404: fine)
            assert name not in gateway.functions
        assert keys(client, "models/default.gamma/") == []  # pushed by the operator: removed
        assert ModelStore(store_config(s3_server)).manifest(pushed).has(2, "min-comm")  # kept
        assert refused(gateway) == []


def test_unreachable_gateway_degrades_then_recovers(s3_server: S3Server, pushed: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on (until the gateway starts there)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    late: list[FakeGateway] = []  # stopped after the operator, which still talks to it
    try:
        with operator(operator_config(s3_server, f"http://127.0.0.1:{port}")) as kube:
            kube.create(model("epsilon", {"model": pushed}, 2))
            status = kube.wait_status(
                "epsilon", "Degraded", lambda s: s.get("phase") == "Degraded", timeout=10
            )
            degraded = condition(status, "Degraded")
            assert (degraded["status"], degraded["reason"]) == ("True", "GatewayUnreachable")
            assert "unreachable" in degraded["message"]
            assert condition(status, "Ready")["status"] == "False"
            assert kube.cluster.alive

            late.append(FakeGateway(port).start())  # the gateway comes up: a retry deploys
            status = kube.wait_status("epsilon", "Ready after the outage", is_ready)
            assert condition(status, "Degraded")["status"] == "False"
            assert len(late[0].calls("POST")) == 2
            assert late[0].rejected == []
    finally:
        for gateway in late:
            gateway.stop()


def test_unreachable_store_degrades_and_is_retried(
    s3_server: S3Server, gateway: FakeGateway
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = dataclasses.replace(store_config(s3_server), endpoint=f"http://127.0.0.1:{port}")
    with operator(operator_config(s3_server, gateway.url, store=store)) as kube:
        kube.create(model("kappa", {"model": "anything"}, 2))
        status = kube.wait_status("kappa", "Degraded", lambda s: s.get("phase") == "Degraded")
        assert condition(status, "Degraded")["reason"] == "StoreUnreachable"
        assert gateway.calls("POST") == []

        def retried() -> bool:  # kopf keeps retrying: the progress annotation counts them
            meta = (kube.get("kappa") or {}).get("metadata", {})
            record = meta.get("annotations", {}).get("fsd.dev/reconcile", "{}")
            return int(json.loads(record).get("retries", 0)) >= 2

        wait_for("a second retry", retried)
        assert kube.cluster.alive


def test_bad_sources_are_permanent_failures(s3_server: S3Server, gateway: FakeGateway) -> None:
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("zeta", {"model": "pushed-no-such-model"}, 2))  # shared, not there
        kube.create(model("eta", {"url": f"s3://{SOURCE_BUCKET}/nothing-here"}, 2))
        for name, reason in (("zeta", "ModelNotFound"), ("eta", "SourceNotFound")):
            status = kube.wait_status(name, reason, lambda s: s.get("phase") == "Degraded")
            assert condition(status, "Degraded")["reason"] == reason
        assert gateway.calls("POST") == []  # nothing deployed for a model that is not there


def test_pro_mode_function_resources(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    """Pro: Function resources in the API; the gateway (here: the test) reports their replicas."""
    config = operator_config(s3_server, gateway.url, mode="pro")
    with operator(config, pro=True) as kube:
        kube.create(model("theta", {"model": pushed}, 2))
        functions = wait_for(
            "two Function resources", lambda: len(kube.functions()) == 2 and kube.functions()
        )
        validator = jsonschema.Draft202012Validator(FUNCTION_CRD_SCHEMA)
        for fn in functions:
            validator.validate(fn)
            # what the OpenFaaS operator would do: deploy it, so the gateway knows it
            spec = fn["spec"]
            gateway.adopt(
                {"service": spec["name"], "image": spec["image"], "labels": spec["labels"]}
            )
        assert {f["metadata"]["name"] for f in functions} == {
            "theta-default-coordinator",
            "theta-default-worker",
        }
        kube.wait_status("theta", "Ready", is_ready)
        assert gateway.calls("POST") == []  # deployed through the API, not the gateway
        secrets = kube.secrets()  # Pro: Kubernetes Secrets in the function namespace
        assert set(secrets) == set(DEFAULT_SECRETS)
        run_key = secrets["fsd-run-key"]
        assert run_key["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "fsd-operator"}
        assert (
            base64.b64decode(run_key["data"]["fsd-run-key"]).decode()
            == (SECRET_VALUES["fsd-run-key"])
        )

        kube.patch_spec("theta", {"scaling": {"min": 3, "max": 5}})

        def worker_min() -> Any:
            worker = next(
                f for f in kube.functions() if f["metadata"]["name"] == "theta-default-worker"
            )
            return worker["spec"]["labels"]["com.openfaas.scale.min"] == "3"

        wait_for("the worker Function patched", worker_min)
        kube.delete("theta")
        wait_for("Functions deleted", lambda: kube.functions() == [])
        wait_for("theta released", lambda: kube.get("theta") is None)


# -- manifests -------------------------------------------------------------------------------------


def test_crds_pass_kubernetes_validate() -> None:
    assert CRDS, "no CRD files in charts/fsd/crds"
    for path in CRDS:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_inference_models_used_here_match_the_crd() -> None:
    crd = yaml.safe_load(CRDS[0].read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    validator = jsonschema.Draft7Validator(schema)
    samples = [
        model("a", {"model": "gc1024"}, 2, channel="s3"),
        model("b", {"url": "s3://fsd-src/challenge"}, 8, scaling={"min": 1, "max": 8}),
        model("c", {"url": "s3://fsd-src/x", "neurons": 256, "layers": 4}, 4, partition="random"),
    ]
    for sample in samples:
        validator.validate(sample)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(model("d", {"model": "x", "url": "s3://fsd-src/x"}, 2))  # oneOf


def test_function_resources_match_the_openfaas_crd(s3_server: S3Server) -> None:
    """Pro-mode objects: the OpenFaaS CRD's schema (jsonschema), not Kubernetes' own schemas."""
    config = operator_config(s3_server, "http://127.0.0.1:1", function_namespace="fns")
    spec = parse_spec({"source": {"model": "m"}, "workers": 16, "resources": {"cpu": "2"}})
    validator = jsonschema.Draft202012Validator(FUNCTION_CRD_SCHEMA)
    for deployment in function_deployments(
        name="a-rather-long-inference-model-name-that-needs-cutting-down-to-size",
        namespace="team",
        spec=spec,
        config=config,
        store_model="m",
    ):
        resource = function_resource(deployment, "fns")
        validator.validate(resource)
        assert len(resource["metadata"]["name"]) <= 63
        assert deployment["namespace"] == "fns"
        assert deployment["envVars"]["FSD_WORKER_URL"].endswith(".fns")
        # kubernetes-validate knows only Kubernetes' own kinds, not openfaas.com's
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(
                resource, kubernetes_validate.latest_version(), strict=True
            )


# -- the entry point, as the image runs it ---------------------------------------------------------


def test_kopf_run_entrypoint(
    s3_server: S3Server, gateway: FakeGateway, pushed: str, tmp_path: Path
) -> None:
    """``kopf run --standalone --all-namespaces operator/main.py`` (the image's ENTRYPOINT) as a
    process configured only by its environment and a kubeconfig; liveness probe included."""
    cluster = Cluster(kopf.OperatorRegistry(), kopf.Memo()).start(operator=False)
    (tmp_path / "kubeconfig").write_text(kubeconfig(cluster.url))
    (tmp_path / "password").write_text("secret\n")
    (tmp_path / "secrets").mkdir()
    # the chart mounts the credentials here; the operator reads its own S3 keys from them too
    mounted = {
        **SECRET_VALUES,
        "fsd-s3-access-key": s3_server.access_key,
        "fsd-s3-secret-key": s3_server.secret_key,
        "fsd-gateway-password": "secret",
    }
    for name, value in mounted.items():
        (tmp_path / "secrets" / name).write_text(value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        liveness = sock.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT / "src"),  # this checkout's operator, not an installed one
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "FSD_SECRETS_DIR": str(tmp_path / "secrets"),
        "FSD_S3_ENDPOINT": s3_server.endpoint,
        "FSD_S3_BUCKET": "fsd",
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "FSD_OPENFAAS_URL": gateway.url,
        "FSD_GATEWAY_PASSWORD_FILE": str(tmp_path / "password"),
        "FSD_OPERATOR_RETRY_SECONDS": "0.2",
        "FSD_OPERATOR_REFRESH_SECONDS": "0.5",
        "FSD_SHARED_MODELS": f"default/{pushed}",  # the admin shares it with this namespace
        "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
    }
    kopf_bin = Path(sys.executable).with_name("kopf")
    command = [str(kopf_bin), "run", "--standalone", "--all-namespaces"]
    command += [f"--liveness=http://127.0.0.1:{liveness}/healthz", str(ROOT / "operator/main.py")]
    log = (tmp_path / "operator.log").open("w")
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        kube = Kube(cluster)
        kube.create(model("iota", {"model": pushed}, 2))
        status = kube.wait_status("iota", "Ready", is_ready, timeout=40)
        assert status["readyWorkers"] == 1
        assert set(gateway.functions) == {"iota-default-coordinator", "iota-default-worker"}
        assert gateway.secrets == mounted  # made by the operator from its mounted files

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=2):
                    return True
            except OSError:
                return False

        wait_for("the liveness probe", healthy)
        kube.delete("iota")
        wait_for("iota released", lambda: kube.get("iota") is None)
        assert gateway.functions == {}
        assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        cluster.stop()


# -- the pure parts --------------------------------------------------------------------------------


def test_names_scaling_and_merge_patches(s3_server: S3Server) -> None:
    long = "m" * 80
    a, b = function_name(long, "default", "worker"), function_name(long + "x", "default", "worker")
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-worker")
    # cleaning changed the name: a hash keeps it from the name it was cleaned into
    assert function_name("My.Model", "team", "coordinator").startswith("my-model-team-")
    assert function_name("my-model", "team", "coordinator") == "my-model-team-coordinator"
    assert function_name("gc.1024", "default", "worker") != function_name(
        "gc-1024", "default", "worker"
    )
    assert len(function_name("a." * 40, "team", "coordinator")) <= 63
    assert function_name("gc1024", "default", "worker") == "gc1024-default-worker"
    assert len(store_name("s" * 100, "default")) <= 64
    assert store_name("gc1024", "team-b") == "team-b.gc1024"

    config = operator_config(s3_server, "http://127.0.0.1:1")
    for workers, scaling, expected in [
        (2, {}, (1, 64)),
        (16, {"min": 1, "max": 8}, (4, 8)),
        (64, {"min": 1, "max": 8}, (8, 8)),  # capped by scaling.max
        (16, {"min": 0, "max": 8}, (1, 8)),  # scale to zero wakes up to one replica
    ]:
        spec = parse_spec({"source": {"model": "m"}, "workers": workers, "scaling": scaling})
        assert worker_scale(spec, config.max_inflight) == expected

    old = {"labels": {"a": "1", "b": "2"}, "image": "x", "secrets": ["s"]}
    new = {"labels": {"a": "1", "c": "3"}, "image": "y", "secrets": ["s"]}
    assert merge_patch(old, new) == {"labels": {"b": None, "c": "3"}, "image": "y"}

    with pytest.raises(SourceError) as bad:
        parse_spec({"source": {"url": "s3://fsd-src/../x"}, "workers": 2})
    assert bad.value.reason == "InvalidSpec" and not bad.value.temporary


# -- issue 10: each defect, its own test -----------------------------------------------------------


def test_community_edition_replica_cap_holds_every_worker(
    s3_server: S3Server, gateway: FakeGateway
) -> None:
    """CE refuses scale.min/max above 5: 64 workers fit as 5 replicas of 13 invocations each."""
    spec = parse_spec(
        {
            "source": {"model": "m"},
            "workers": 64,
            "scaling": {"max": 64},
            "resources": {"memory": "4Gi"},  # 13 invocations of 315 MiB (1Gi: refused)
        }
    )
    ce = operator_config(s3_server, gateway.url)
    pro = pro_mode(ce)
    kwargs: dict[str, Any] = {"name": "big", "namespace": "default", "spec": spec}
    for deployment in function_deployments(config=ce, store_model="m", **kwargs):
        labels = deployment["labels"]
        assert int(labels["com.openfaas.scale.max"]) <= 5, deployment["service"]
        assert gateway.invalid_deployment({**deployment, "secrets": []}) == ""
    worker = function_deployments(config=ce, store_model="m", **kwargs)[1]
    assert int(worker["envVars"]["max_inflight"]) * 5 >= 64  # every worker has a slot at once
    worker = function_deployments(config=pro, store_model="m", **kwargs)[1]
    assert worker["labels"]["com.openfaas.scale.max"] == "64"  # Pro: no cap
    assert worker["envVars"]["max_inflight"] == str(pro.max_inflight)


def test_same_name_in_two_namespaces_gets_its_own_functions(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("gc", {"model": pushed}, 2, namespace="a"))
        kube.create(model("gc", {"model": pushed}, 2, namespace="b"))
        kube.wait_status("gc", "Ready in a", is_ready, namespace="a")
        kube.wait_status("gc", "Ready in b", is_ready, namespace="b")
        names = {"gc-a-coordinator", "gc-a-worker", "gc-b-coordinator", "gc-b-worker"}
        assert set(gateway.functions) == names
        assert gateway.calls("PUT") == []  # neither overwrote the other
        uid_a = (kube.get("gc", "a") or {})["metadata"]["uid"]
        assert gateway.functions["gc-a-worker"]["labels"]["fsd.dev/owner-uid"] == uid_a

        kube.delete("gc", "a")
        wait_for("a/gc released", lambda: kube.get("gc", "a") is None)
        assert set(gateway.functions) == {"gc-b-coordinator", "gc-b-worker"}  # b's kept
        kube.wait_status("gc", "still Ready", is_ready, namespace="b")
        assert refused(gateway) == []


def test_an_unmanaged_function_of_a_taken_name_is_never_touched(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    foreign = {"service": "taken-default-worker", "image": "someone/else:1", "labels": {}}
    gateway.adopt(foreign)
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("taken", {"model": pushed}, 2))
        status = kube.wait_status(
            "taken", "Degraded", lambda s: s.get("phase") == "Degraded", timeout=20
        )
        degraded = condition(status, "Degraded")
        assert degraded["reason"] == "FunctionNameTaken"
        assert "taken-default-worker" in degraded["message"]
        assert gateway.functions["taken-default-worker"] is foreign  # not PUT over
        assert gateway.calls("PUT", "taken-default-worker") == []

        kube.delete("taken")
        wait_for("taken released", lambda: kube.get("taken") is None)
        assert gateway.functions["taken-default-worker"] is foreign  # not deleted either
        assert gateway.calls("DELETE", "taken-default-worker") == []

        # the name frees: a new object of that name recovers by itself (temporary, retried)
        kube.create(model("taken", {"model": pushed}, 2))
        kube.wait_status("taken", "Degraded again", lambda s: s.get("phase") == "Degraded")
        with gateway.lock:
            del gateway.functions["taken-default-worker"]
        kube.wait_status("taken", "Ready once the name is free", is_ready)


def test_a_missing_secret_degrades_naming_it_then_recovers(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    values = dict(SECRET_VALUES)
    del values["fsd-run-key"]
    folder = secrets_dir(values)
    config = operator_config(s3_server, gateway.url, secrets_dir=str(folder))
    with operator(config) as kube:
        kube.create(model("sigma", {"model": pushed}, 2))
        status = kube.wait_status("sigma", "Degraded", lambda s: s.get("phase") == "Degraded")
        degraded = condition(status, "Degraded")
        assert degraded["reason"] == "SecretMissing"
        assert "fsd-run-key" in degraded["message"]
        assert gateway.functions == {}  # nothing deployed without its secrets

        (folder / "fsd-run-key").write_text(SECRET_VALUES["fsd-run-key"])  # the file appears
        kube.wait_status("sigma", "Ready once the file is there", is_ready)
        assert gateway.secrets == SECRET_VALUES
        assert refused(gateway) == []

        # rotated: the refresh timer copies the new value
        (folder / "fsd-run-key").write_text("rotated-" + "y" * 32)
        wait_for("the rotated secret", lambda: gateway.secrets["fsd-run-key"].startswith("rot"))


def test_secrets_refused_then_accepted(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    gateway.refuse_secrets = 3  # e.g. the gateway's RBAC not there yet: 403 Forbidden
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("tau", {"model": pushed}, 2))
        status = kube.wait_status("tau", "Degraded", lambda s: s.get("phase") == "Degraded")
        degraded = condition(status, "Degraded")
        assert degraded["reason"] == "SecretRejected"
        assert "fsd-nats-token" in degraded["message"]
        assert SECRET_VALUES["fsd-nats-token"] not in json.dumps(status)  # never a value
        kube.wait_status("tau", "Ready once accepted", is_ready)
        assert gateway.secrets == SECRET_VALUES


def test_unable_to_fetch_secrets_is_temporary(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    """faas-netes' 400 'unable to fetch secrets' on deploy: Degraded, retried, never permanent."""
    from fsd.k8s.openfaas_gateway import GatewayClient, GatewayError

    client = GatewayClient(gateway.url, password="secret")
    spec = parse_spec({"source": {"model": pushed}, "workers": 2})
    config = operator_config(s3_server, gateway.url)
    deployment = function_deployments(
        name="u", namespace="default", spec=spec, config=config, store_model=pushed
    )[0]
    with pytest.raises(GatewayError) as refused:
        client.create(deployment)
    assert refused.value.status == 400 and refused.value.temporary
    assert refused.value.reason == "SecretMissing"


def test_a_private_image_on_ce_is_degraded_then_retried(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    """CE deploys only images it can pull anonymously; made public, the model recovers by itself
    (no spec change), so the 400 is temporary, not permanent."""
    config = operator_config(s3_server, gateway.url)
    with gateway.lock:
        gateway.private.add(config.worker_image)
    with operator(config) as kube:
        kube.create(model("priv", {"model": pushed}, 2))
        status = kube.wait_status("priv", "Degraded", lambda s: s.get("phase") == "Degraded")
        degraded = condition(status, "Degraded")
        assert degraded["reason"] == "ImageNotPublic", degraded
        assert "public images" in degraded["message"]
        with gateway.lock:
            gateway.private.clear()  # the user made the image public
        kube.wait_status("priv", "Ready once public", is_ready)


def test_scale_to_zero_uses_the_scale_zero_label_and_is_not_ready_at_zero(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    spec = parse_spec({"source": {"model": pushed}, "workers": 2, "scaling": {"min": 0}})
    for mode in ("ce", "pro"):
        config = operator_config(s3_server, gateway.url, mode=mode)
        for deployment in function_deployments(
            name="z", namespace="default", spec=spec, config=config, store_model=pushed
        ):
            labels = deployment["labels"]
            assert labels["com.openfaas.scale.min"] == "1"  # faas-netes' minimum
            # Pro scales to zero; CE's faas-netes refuses the label (validate.go)
            assert labels.get("com.openfaas.scale.zero") == ("true" if mode == "pro" else None)

    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("zero", {"model": pushed}, 2, scaling={"min": 0, "max": 4}))
        kube.wait_status("zero", "Ready", is_ready)
        assert refused(gateway) == []
        with gateway.lock:  # the idler scales both to zero
            gateway.idle.update({"zero-default-coordinator", "zero-default-worker"})
            gateway.functions["zero-default-worker"]["labels"]["com.openfaas.scale.zero"] = "true"
            gateway.functions["zero-default-coordinator"]["labels"]["com.openfaas.scale.zero"] = (
                "true"
            )
        # the operator's own deployments (CE) do not scale to zero: 0 replicas is waiting
        status = kube.wait_status("zero", "not Ready", lambda s: s.get("phase") == "Deploying")
        assert condition(status, "Ready")["status"] == "False"
        assert status["readyWorkers"] == 0


def test_scaled_to_zero_is_reported_as_such(s3_server: S3Server, gateway: FakeGateway) -> None:
    from fsd.k8s.openfaas import readiness
    from fsd.k8s.openfaas_gateway import GatewayClient

    config = operator_config(s3_server, gateway.url, mode="pro")
    spec = parse_spec({"source": {"model": "m"}, "workers": 2, "scaling": {"min": 0}})
    deployments = function_deployments(
        name="idle", namespace="default", spec=spec, config=config, store_model="m"
    )
    for deployment in deployments:
        gateway.adopt(deployment)  # what Pro's operator would deploy
    gateway.idle.update(d["service"] for d in deployments)
    state = readiness(GatewayClient(gateway.url, password="secret"), deployments)
    assert not state.ready and state.idle and state.ready_workers == 0
    assert "scaled to zero" in state.message


def test_phases_pending_partitioning_deploying_ready_deleting(
    s3_server: S3Server, gateway: FakeGateway, challenge: Path
) -> None:
    url = upload(s3_server.client(), challenge)
    seen: list[str] = []
    with operator(operator_config(s3_server, gateway.url)) as kube:
        parts = urlsplit(kube.cluster.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
        conn.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}?watch=true")
        stream = conn.getresponse()

        def watch() -> None:  # every phase the API server stored, in order
            try:
                for line in stream:
                    obj = json.loads(line).get("object", {}) if line.strip() else {}
                    if obj.get("metadata", {}).get("name") == "phi":
                        phase = (obj.get("status") or {}).get("phase")
                        if phase and (not seen or seen[-1] != phase):
                            seen.append(phase)
            except Exception:  # the test closes the stream under it: the end of the watch
                pass

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        time.sleep(0.3)  # the watch is open
        gateway.hold = True
        kube.create(model("phi", {"url": url}, 2))
        kube.wait_status("phi", "Deploying", lambda s: s.get("phase") == "Deploying")
        gateway.hold = False
        kube.wait_status("phi", "Ready", is_ready)
        kube.delete("phi")
        wait_for("phi released", lambda: kube.get("phi") is None)
        wait_for("Deleting seen", lambda: "Deleting" in seen)
        if conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        thread.join(5)
    assert seen[:4] == ["Pending", "Partitioning", "Deploying", "Ready"], seen
    assert seen[-1] == "Deleting", seen


def test_images_outside_the_allowlist_are_refused(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    with operator(operator_config(s3_server, gateway.url)) as kube:
        evil = {"worker": "evil.example/steal-secrets:latest"}
        kube.create(model("omega", {"model": pushed}, 2, image=evil))
        ok = {"worker": "fsd.local/fsd-worker@sha256:" + "0" * 64}
        kube.create(model("psi", {"model": pushed}, 2, image=ok))
        status = kube.wait_status("omega", "Degraded", lambda s: s.get("phase") == "Degraded")
        degraded = condition(status, "Degraded")
        assert degraded["reason"] == "ImageNotAllowed"
        assert "evil.example" in degraded["message"]
        kube.wait_status("psi", "Ready", is_ready)
        assert not any(name.startswith("omega") for name in gateway.functions)
    from fsd.k8s.config import image_allowed

    prefixes = ("ttl.sh/fsd-worker", "registry.example/fsd/")
    assert image_allowed("ttl.sh/fsd-worker:1.2", prefixes)
    assert image_allowed("registry.example/fsd/anything:1", prefixes)
    assert not image_allowed("ttl.sh/fsd-worker-evil:1", prefixes)
    assert not image_allowed("registry.example/fsdx/a:1", prefixes)
    env = {"FSD_S3_ENDPOINT": "http://s3:9000", "FSD_ALLOWED_IMAGES": "a/b, c/"}
    assert OperatorConfig.from_env(env).image_prefixes == ("a/b", "c/")
    # the defaults are stack.yml's local names, no registry's (review 10, finding 12)
    assert OperatorConfig.from_env({"FSD_S3_ENDPOINT": "http://s3:9000"}).image_prefixes == (
        "fsd.local/fsd-coordinator",
        "fsd.local/fsd-worker",
    )


def test_operator_numbers_must_be_finite_and_bounded() -> None:

    base = {"FSD_S3_ENDPOINT": "http://s3:9000"}
    for name, raw in [
        ("FSD_FANOUT", "nan"),
        ("FSD_FANOUT", "0"),
        ("FSD_FANOUT", "2.5"),
        ("FSD_GATEWAY_TIMEOUT", "inf"),
        ("FSD_OPERATOR_RETRY_SECONDS", "-1"),
        ("FSD_OPERATOR_MAX_SOURCE_MB", "1e300"),
    ]:
        with pytest.raises(InputError, match=name):
            OperatorConfig.from_env({**base, name: raw})
    off = OperatorConfig.from_env({**base, "FSD_PROMETHEUS_URL": ""})
    assert openfaas_settings(off).prometheus_url == ""
    on = openfaas_settings(OperatorConfig.from_env(base))
    assert on.prometheus_url == "http://prometheus.openfaas:9090"


def test_functions_run_with_a_read_only_root_filesystem(s3_server: S3Server) -> None:
    config = operator_config(s3_server, "http://127.0.0.1:1")
    spec = parse_spec({"source": {"model": "m"}, "workers": 2})
    for deployment in function_deployments(
        name="ro", namespace="default", spec=spec, config=config, store_model="m"
    ):
        assert deployment["readOnlyRootFilesystem"] is True
        assert function_resource(deployment, "openfaas-fn")["spec"]["readOnlyRootFilesystem"]
        env = deployment["envVars"]  # contract 6: a request never outlives the watchdog
        assert float(env["FSD_MAX_TIMEOUT"]) < float(env["exec_timeout"].removesuffix("s"))
        assert env["FSD_TIMEOUT"] == "120"


def test_status_names_the_coordinator_function_and_url(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("gc1024", {"model": pushed}, 2))
        status = kube.wait_status("gc1024", "Ready", is_ready)
    assert status["coordinator"] == {
        "function": "gc1024-default-coordinator",
        "url": f"{gateway.url}/function/gc1024-default-coordinator",
    }
    crd = yaml.safe_load(CRDS[0].read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    jsonschema.Draft7Validator(schema).validate(status)  # nothing pruned by the API server
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Coordinator"] == ".status.coordinator.function"


class _Host:
    """A FunctionHost that echoes: what the gateway stand-in hands to a plugged-in host."""

    def __init__(self) -> None:
        self.running: dict[str, dict[str, str]] = {}
        self.replicas = 1

    def deployed(self, deployment: dict[str, Any], secrets: dict[str, str]) -> None:
        self.running[deployment["service"]] = secrets

    def removed(self, name: str) -> None:
        self.running.pop(name, None)

    def available(self, name: str) -> int:
        return self.replicas if name in self.running else 0

    def forward(
        self, name: str, method: str, subpath: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/json"}, json.dumps([name, subpath]).encode()


def test_gateway_stand_in_follows_faas_netes() -> None:
    """The stand-in's rules (tests/k8s/k8s_gateway.py cites the faas-netes file of each)."""
    import urllib3

    host = _Host()
    gw = FakeGateway(host=host).start()
    http = urllib3.PoolManager()
    auth = urllib3.make_headers(basic_auth="admin:secret")

    def call(method: str, path: str, body: Any = None, **headers: str) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        resp = http.request(method, gw.url + path, body=data, headers={**auth, **headers})
        return resp.status, resp.data

    try:
        fn = {"service": "f", "image": "i", "secrets": ["s1"], "labels": {"a": "1"}}
        assert call("POST", "/system/functions", {**fn, "service": "F_x"})[0] == 400
        assert call("POST", "/system/functions", {**fn, "labels": {"a": 1}})[0] == 400
        assert call("POST", "/system/functions", {**fn, "envVars": {"x": True}})[0] == 400
        code, text = call("POST", "/system/functions", fn)
        assert (code, b"unable to fetch secrets" in text) == (400, True)
        zero = {**fn, "secrets": [], "labels": {"com.openfaas.scale.zero": "true"}}
        assert call("POST", "/system/functions", zero)[0] == 400  # CE
        # /system/secrets CRUD
        assert call("POST", "/system/secrets", {"name": "s1", "value": "v1"})[0] == 202
        assert call("POST", "/system/secrets", {"name": "s1", "value": "v1"})[0] == 409
        assert call("PUT", "/system/secrets", {"name": "nope", "value": "v"})[0] == 404
        assert call("POST", "/system/secrets", {"name": "Bad_Name", "value": "v"})[0] == 422
        other = {"name": "s2", "value": "v", "namespace": "elsewhere"}
        assert call("POST", "/system/secrets", other)[0] == 400
        assert call("GET", "/system/secrets?namespace=elsewhere")[0] == 400
        code, listed = call("GET", "/system/secrets")
        assert json.loads(listed) == [{"name": "s1", "namespace": "openfaas-fn"}]  # no values
        assert call("PUT", "/system/secrets", {"name": "s1", "value": "v2"})[0] == 202
        # deploy, invoke through the host, delete
        assert call("POST", "/system/functions", fn)[0] == 202
        assert host.running == {"f": {"s1": "v2"}}
        assert call("POST", "/system/functions", fn)[0] == 500  # the Deployment exists
        assert call("PUT", "/system/functions", fn)[0] == 202
        assert call("GET", "/system/function/f?namespace=elsewhere")[0] == 400
        status = json.loads(call("GET", "/system/function/f")[1])
        assert status["availableReplicas"] == 1
        resp = http.request("POST", f"{gw.url}/function/f.openfaas-fn/sub", body=b"{}")
        assert (resp.status, json.loads(resp.data)) == (200, ["f", "sub"])  # no auth needed
        assert http.request("GET", f"{gw.url}/function/absent").status == 404
        host.replicas = 0
        assert http.request("GET", f"{gw.url}/function/f").status == 503
        assert http.request("GET", f"{gw.url}/system/functions").status == 401
        assert call("DELETE", "/system/functions", {"functionName": "f"})[0] == 202
        assert call("DELETE", "/system/functions", {"functionName": "f"})[0] == 404
        assert host.running == {}
        assert call("DELETE", "/system/secrets", {"name": "s1"})[0] == 202
        assert call("DELETE", "/system/secrets", {"name": "s1"})[0] == 404
    finally:
        gw.stop()


# -- review 10: each finding, its own test ---------------------------------------------------------


def test_worker_threads_cover_every_admitted_invocation(s3_server: S3Server) -> None:
    """Finding 2: of-watchdog admits max_inflight workers that must all run at once, so index.py
    gets FSD_THREADS = max_inflight + 2; more workers than CE's replicas hold: a spec error."""
    ce = operator_config(s3_server, "http://127.0.0.1:1")
    for config in (ce, pro_mode(ce)):
        for workers in (2, 64, 1000):
            memory = {"memory": "64Gi"}  # 1000 workers on 5 replicas: 200 invocations each
            spec = parse_spec({"source": {"model": "m"}, "workers": workers, "resources": memory})
            worker = function_deployments(
                name="t", namespace="default", spec=spec, config=config, store_model="m"
            )[1]
            env = worker["envVars"]
            assert int(env["FSD_THREADS"]) == int(env["max_inflight"]) + 2 <= 256, env
    spec = parse_spec({"source": {"model": "m"}, "workers": 4096})
    with pytest.raises(SourceError) as refused:
        function_deployments(name="t", namespace="default", spec=spec, config=ce, store_model="m")
    assert refused.value.reason == "InvalidSpec" and not refused.value.temporary
    with pytest.raises(Exception, match="FSD_MAX_INFLIGHT"):
        OperatorConfig.from_env({"FSD_S3_ENDPOINT": "http://s3:9000", "FSD_MAX_INFLIGHT": "255"})


def test_timeouts_and_shutdown_follow_the_functions_rules(s3_server: S3Server) -> None:
    """Findings 14 and 20: FSD_MAX_TIMEOUT is exec_timeout less the functions' own margin (one
    value), and index.py closes its listener 2 s after the watchdog stops accepting."""
    from fsd.functions.config import Limits, exec_timeout
    from fsd.settings import EXEC_MARGIN  # the functions' margin (fsd.functions.config uses it)

    config = operator_config(s3_server, "http://127.0.0.1:1")
    spec = parse_spec({"source": {"model": "m"}, "workers": 2})
    maxima: dict[str, float] = {}
    for deployment in function_deployments(
        name="t", namespace="default", spec=spec, config=config, store_model="m"
    ):
        env = deployment["envVars"]
        watchdog = exec_timeout(env)
        assert watchdog is not None
        limits = Limits.from_env(env)  # the function accepts what the operator sets
        assert limits.max_timeout <= watchdog - EXEC_MARGIN, deployment["service"]
        maxima[deployment["labels"]["fsd.dev/role"]] = limits.max_timeout
        interval = float(env["healthcheck_interval"].removesuffix("s"))
        assert float(env["FSD_SHUTDOWN_DELAY_SECONDS"]) == interval + 2
    assert worker_env(config)["FSD_MAX_TIMEOUT"] == "295"  # stack.yml's worker value
    # a request's whole inference fits in what its workers may run: none is cut by its watchdog
    assert maxima["coordinator"] <= maxima["worker"]


def worker_env(config: OperatorConfig) -> dict[str, str]:
    spec = parse_spec({"source": {"model": "m"}, "workers": 2})
    deployments = function_deployments(
        name="t", namespace="default", spec=spec, config=config, store_model="m"
    )
    return dict(deployments[1]["envVars"])


def test_no_secret_value_in_status_events_or_logs(
    s3_server: S3Server, gateway: FakeGateway, pushed: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 5: a gateway that echoes the secret call's body in its error answer."""
    caplog.set_level(logging.DEBUG)
    gateway.echo_secrets = True
    with operator(operator_config(s3_server, gateway.url), events=True) as kube:
        kube.create(model("echo", {"model": pushed}, 2))
        status = kube.wait_status("echo", "Degraded", lambda s: s.get("phase") == "Degraded")
        assert condition(status, "Degraded")["reason"] == "SecretRejected"
        api = kube.cluster.api
        assert api is not None

        def events() -> list[str]:  # every Event kopf posted (kmock keeps the requests)
            texts = [
                r.text
                for r in list(api)
                if str(r.method).upper().endswith("POST") and r.url.path.endswith("/events")
            ]
            return texts if any("SecretRejected" in t for t in texts) else []

        posted = wait_for("kopf's Event of the failure", events)
        assert any("HTTP 400" in text for text in posted)
        assert any(SECRET_VALUES["fsd-nats-token"] in why for _, _, why in gateway.rejected)
        shown = json.dumps(status) + json.dumps(posted) + caplog.text
        for value in SECRET_VALUES.values():
            assert value not in shown


class _Trickle:
    """A gateway that answers a function status one byte at a time, slowly, or without end."""

    def __init__(self, body: bytes, pause: float) -> None:
        self.body, self.pause = body, pause
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.done = threading.Event()
        self.accepted = threading.Event()  # a request came and is being answered
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            self.accepted.set()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n"
            try:
                conn.sendall(head.encode())
                for i in range(len(self.body)):
                    if self.done.wait(self.pause):
                        return
                    conn.sendall(self.body[i : i + 1])
            except OSError:
                return

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def test_gateway_answers_are_bounded_in_size_and_time(gateway: FakeGateway) -> None:
    """Finding 6: a byte cap and a total deadline on every gateway answer."""
    from fsd.k8s.openfaas_gateway import MAX_ANSWER, GatewayClient, GatewayError

    gateway.adopt({"service": "f", "image": "i", "labels": {}})
    gateway.odd_status = {"name": "f", "image": "i", "labels": {"x": "y" * MAX_ANSWER}}
    with pytest.raises(GatewayError, match="more than") as large:
        GatewayClient(gateway.url, password="secret").status("f")
    assert large.value.temporary

    body = json.dumps({"name": "f", "image": "i"}).encode() + b" " * 200
    slow = _Trickle(body, pause=0.05)  # each byte within the read timeout, the whole far beyond
    try:
        with pytest.raises(GatewayError, match="unreachable") as late:
            GatewayClient(slow.url, timeout=0.5).status("f")
        assert late.value.temporary
    finally:
        slow.close()


def test_secret_writes_hold_no_lock_across_calls(s3_server: S3Server, gateway: FakeGateway) -> None:
    """Finding 6: one object's stalled secret call does not stop another's."""
    from fsd.k8s.openfaas import GatewaySecrets
    from fsd.k8s.openfaas_gateway import GatewayClient, GatewayError

    stalled = _Trickle(b"[]", pause=60)  # answers the list of secrets never

    def stalls() -> None:
        with contextlib.suppress(GatewayError):  # cut off when the test closes the stand-in
            GatewaySecrets(GatewayClient(stalled.url, timeout=60), {}).ensure(SECRET_VALUES)

    first = threading.Thread(target=stalls, daemon=True)
    first.start()
    second = threading.Thread(
        target=lambda: GatewaySecrets(GatewayClient(gateway.url, password="secret"), {}).ensure(
            SECRET_VALUES
        ),
        daemon=True,
    )
    try:
        wait_for("the first call stalled in the gateway", stalled.accepted.is_set)
        second.start()
        second.join(30)  # a hang guard: with a lock it would wait for the first (60 s and more)
        assert not second.is_alive() and gateway.secrets == SECRET_VALUES
        assert first.is_alive()
    finally:
        stalled.close()


@pytest.mark.parametrize(
    "odd",
    [
        {"name": "f", "replicas": "x"},
        {"name": "f", "availableReplicas": float("inf")},
        {"name": "f", "replicas": 1.5},
        {"name": "f", "replicas": -1},
        {"name": "f", "labels": ["a"]},
        {"name": "f", "labels": {"a": 1}},
        {"name": ["f"]},
    ],
)
def test_an_odd_function_status_is_a_temporary_gateway_error(
    gateway: FakeGateway, odd: Any
) -> None:
    """Finding 7: the gateway's types are checked, never trusted into a ValueError or a crash."""
    from fsd.k8s.openfaas_gateway import GatewayClient, GatewayError

    gateway.adopt({"service": "f", "image": "i", "labels": {}})
    gateway.odd_status = odd
    with pytest.raises(GatewayError) as odd_answer:
        GatewayClient(gateway.url, password="secret").status("f")
    assert odd_answer.value.temporary


def test_fixable_refusals_are_temporary_as_faas_netes_words_them(
    s3_server: S3Server, gateway: FakeGateway
) -> None:
    """Findings 8 and 23: faas-netes' texts as its handlers send them (``http.Error`` appends a
    newline): pkg/handlers/deploy.go ``fmt.Errorf("unable to fetch secrets: %s", err.Error())``
    over the API server's ``secrets "<name>" not found``, and CE's ``fmt.Errorf("unable to
    create function, maximum: %d", MaxFunctions)``; a 401 is a rotated password."""
    from fsd.k8s.openfaas_gateway import GatewayClient, GatewayError, classify
    from k8s_gateway import FETCH_SECRETS, MAX_FUNCTIONS

    fetch = 'unable to fetch secrets: secrets "fsd-run-key" not found\n'
    limit = "unable to create function, maximum: 15\n"
    assert FETCH_SECRETS.format(name="fsd-run-key") == fetch  # the stand-in says it so
    assert MAX_FUNCTIONS.format(limit=15) == limit
    assert classify(400, fetch.strip()) == (True, "SecretMissing")
    assert classify(400, limit.strip()) == (True, "FunctionLimit")
    assert classify(401, "Unauthorized") == (True, "GatewayUnauthorized")
    assert classify(400, "validation failed: service: (F) is invalid") == (False, None)

    spec = parse_spec({"source": {"model": "m"}, "workers": 2})
    config = operator_config(s3_server, gateway.url)
    deployment = function_deployments(
        name="u", namespace="default", spec=spec, config=config, store_model="m"
    )[0]
    client = GatewayClient(gateway.url, password="secret")
    with pytest.raises(GatewayError) as missing:
        client.create(deployment)
    assert (missing.value.reason, missing.value.temporary) == ("SecretMissing", True)
    for i in range(15):
        gateway.adopt({"service": f"other-{i}", "image": "i", "labels": {}})
    gateway.secrets.update(SECRET_VALUES)
    with pytest.raises(GatewayError) as full:
        client.create(deployment)
    assert (full.value.reason, full.value.temporary) == ("FunctionLimit", True)
    with pytest.raises(GatewayError) as unauthorized:
        GatewayClient(gateway.url, password="old").status("u")
    assert (unauthorized.value.reason, unauthorized.value.temporary) == (
        "GatewayUnauthorized",
        True,
    )


def test_a_rotated_gateway_password_is_picked_up(
    s3_server: S3Server, gateway: FakeGateway, pushed: str, tmp_path: Path
) -> None:
    """Finding 8: a 401 is retried and the password file read again (the chart names it)."""
    password = tmp_path / "fsd-gateway-password"
    password.write_text("old-password\n")
    config = operator_config(
        s3_server, gateway.url, gateway_password="", gateway_password_file=str(password)
    )
    with operator(config) as kube:
        kube.create(model("rot", {"model": pushed}, 2))
        status = kube.wait_status("rot", "Degraded", lambda s: s.get("phase") == "Degraded")
        assert condition(status, "Degraded")["reason"] == "GatewayUnauthorized"
        password.write_text("secret\n")  # the rotated Secret's file, as the kubelet updates it
        kube.wait_status("rot", "Ready with the new password", is_ready)


def test_refresh_takes_the_model_from_the_spec_not_the_status(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    """Finding 11: status is writable by others; a forged status.modelName is never served."""
    from fsd.k8s.handlers import refresh

    config = operator_config(s3_server, gateway.url, prometheus_url="")
    memo = kopf.Memo(config=config, fsd_deployed_generation=1)
    spec: Any = {"source": {"model": pushed}, "workers": 2}
    meta: Any = {"generation": 1, "uid": "u-1", "name": "f11", "namespace": "default"}
    status: Any = {"modelName": "forged-model", "phase": "Ready"}
    refresh(
        spec=spec,
        meta=meta,
        status=status,
        name="f11",
        namespace="default",
        patch=kopf.Patch(),
        memo=memo,
        logger=logging.getLogger("test"),
    )
    posted = gateway.calls("POST")
    assert len(posted) == 2  # both were missing: deployed again
    assert {p["envVars"]["FSD_MODELS"] for p in posted} == {pushed}


@pytest.mark.parametrize(("memory", "mb"), [("2Gi", 2048), ("1Gi", 1024), ("3G", 2861)])
def test_the_coordinator_plans_with_what_one_worker_invocation_may_use(
    s3_server: S3Server, memory: str, mb: int
) -> None:
    """FSD_MEMORY_MB: the worker's memory limit shared by its concurrent invocations."""
    config = operator_config(s3_server, "http://127.0.0.1:1")
    spec = parse_spec({"source": {"model": "m"}, "workers": 4, "resources": {"memory": memory}})
    coordinator, worker = function_deployments(
        name="gc", namespace="team", spec=spec, config=config, store_model="m"
    )
    inflight = int(worker["envVars"]["max_inflight"])
    assert coordinator["envVars"]["FSD_MEMORY_MB"] == str(mb // inflight)
    assert "FSD_MEMORY_MB" not in worker["envVars"]


# -- second trust audit: tenants stay apart, specs that cannot work are refused ---------------


def test_a_namespace_reaches_only_its_own_and_shared_models(
    s3_server: S3Server, gateway: FakeGateway, challenge: Path, pushed: str
) -> None:
    """``team-a`` naming ``team-b``'s model (pushed by the operator for ``team-b``) is refused
    with the same words as a model that does not exist, and nothing is deployed for it; the
    same model serves in ``team-b``; an admin's share (``FSD_SHARED_MODELS``) opens exactly the
    namespaces it names. On the code before, ``team-a`` got a coordinator serving it."""
    url = upload(s3_server.client(), challenge)
    shared = ModelAccess.parse(f"team-a/{pushed}")
    with operator(operator_config(s3_server, gateway.url, shared=shared)) as kube:
        kube.create(model("secret-model", {"url": url}, 2, namespace="team-b"))
        kube.wait_status("secret-model", "Ready", is_ready, namespace="team-b")
        kube.create(model("thief", {"model": "team-b.secret-model"}, 2, namespace="team-a"))
        kube.create(model("prober", {"model": "team-b.no-such-model"}, 2, namespace="team-a"))
        kube.create(model("same-ns", {"model": "team-b.secret-model"}, 2, namespace="team-b"))
        kube.create(model("granted", {"model": pushed}, 2, namespace="team-a"))
        kube.create(model("ungranted", {"model": pushed}, 2, namespace="team-c"))
        details = []
        for name, namespace in (("thief", "team-a"), ("prober", "team-a"), ("ungranted", "team-c")):
            status = kube.wait_status(
                name, "Degraded", lambda s: s.get("phase") == "Degraded", namespace=namespace
            )
            degraded = condition(status, "Degraded")
            assert degraded["reason"] == "ModelNotAllowed", status
            details.append(degraded["message"].split("'")[2])  # the words after the name
        assert details[0] == details[1]  # the same whether it exists or not: no probing
        kube.wait_status("same-ns", "Ready", is_ready, namespace="team-b")
        kube.wait_status("granted", "Ready", is_ready, namespace="team-a")
        deployed = set(gateway.functions)
        for name, namespace in (("thief", "team-a"), ("prober", "team-a"), ("ungranted", "team-c")):
            assert function_name(name, namespace, "coordinator") not in deployed
        models = {p["envVars"]["FSD_MODELS"] for p in gateway.calls("POST")}
        assert models == {"team-b.secret-model", pushed}
    with pytest.raises(InputError, match="FSD_SHARED_MODELS"):
        ModelAccess.parse("team-a")  # no namespace/model
    with pytest.raises(InputError, match="FSD_SHARED_MODELS"):
        ModelAccess.parse("Team_A/gc1024")


@pytest.mark.parametrize(
    ("spec", "mention"),
    [
        ({"resources": {"memory": "1Gi\n"}}, "spec.resources.memory"),
        ({"resources": {"cpu": "1\n"}}, "spec.resources.cpu"),
        ({"source": {"model": "gc1024\n"}}, "spec.source.model"),
        ({"resources": {"memory": "0"}}, "spec.resources.memory"),
        ({"resources": {"memory": "99999Ti"}}, "spec.resources.memory"),
        ({"resources": {"cpu": "0"}}, "spec.resources.cpu"),
        ({"resources": {"cpu": "100000"}}, "spec.resources.cpu"),
        ({"resources": {"cpu": "0.5m"}}, "spec.resources.cpu"),
        ({"scaling": {"max": 10**9}}, "spec.scaling.max"),
        ({"scaling": {"min": 8, "max": 4}}, "spec.scaling.max"),
        ({"source": {"model": "m", "neurons": 2**40}}, "spec.source.neurons"),
        ({"image": {"worker": "fsd.local/fsd-worker:1 --evil"}}, "spec.image.worker"),
        # each worker invocation would get 78 (CE: 13 on 5 replicas) and 128 MiB, under the 200
        ({"workers": 64}, "give at least 2613Mi"),
        ({"workers": 4, "resources": {"memory": "512Mi"}}, "give at least 804Mi"),
    ],
)
def test_a_spec_that_cannot_work_is_a_permanent_invalid_spec(
    s3_server: S3Server, spec: dict[str, Any], mention: str
) -> None:
    """Refused with the reason (Degraded, never retried until the spec changes), not deployed
    to answer 503 forever, nor a ValueError retried forever (``1Gi\\n`` passed a ``$``)."""
    config = operator_config(s3_server, "http://127.0.0.1:1")
    body = {"source": {"model": "m"}, "workers": 2, **spec}
    with pytest.raises(SourceError) as refused:
        parsed = parse_spec(body)
        function_deployments(
            name="t", namespace="default", spec=parsed, config=config, store_model="m"
        )
    assert refused.value.reason == "InvalidSpec" and not refused.value.temporary
    assert mention in str(refused.value)


def test_an_unworkable_spec_is_degraded_at_once_and_not_retried(
    s3_server: S3Server, gateway: FakeGateway, pushed: str
) -> None:
    with operator(operator_config(s3_server, gateway.url)) as kube:
        kube.create(model("lambda", {"model": pushed}, 2, resources={"memory": "1Gi\n"}))
        kube.create(model("mu", {"model": pushed}, 64))  # 1Gi for 13 invocations a replica
        kube.create(model("nu", {"model": pushed}, 2, channel="s3"))
        for name in ("lambda", "mu"):
            status = kube.wait_status(name, "Degraded", lambda s: s.get("phase") == "Degraded")
            assert condition(status, "Degraded")["reason"] == "InvalidSpec", status
        kube.wait_status("nu", "Ready", is_ready)
        assert {p["service"] for p in gateway.calls("POST")} == {
            "nu-default-coordinator",
            "nu-default-worker",
        }
        nu = gateway.functions["nu-default-coordinator"]["envVars"]
        assert (nu["FSD_CHANNEL"], nu["FSD_CHANNELS"]) == ("s3", "nats,s3")
    with pytest.raises(InputError, match="FSD_CHANNELS"):
        OperatorConfig.from_env({"FSD_S3_ENDPOINT": "http://s3:9000", "FSD_CHANNELS": "nats,sqs"})
