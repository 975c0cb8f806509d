"""Knative Serving as a platform: the operator's Services, against kmock and the stand-in.

- the desired state alone (:func:`fsd.k8s.knative.knative_service`): the fields of the two
  ``serving.knative.dev/v1`` Services, and that Knative's webhook rules (the stand-in's
  ``_refused``) admit them;
- the operator (kopf) against kmock's API with the Knative Service resource registered: an
  InferenceModel with ``platform: knative`` gets its two Services and Secrets, the Services'
  ``Ready`` condition (written here as Knative's controller would) flows to its status, deletion
  and withdrawal remove them;
- end to end: the operator, the Knative stand-in (tests/k8s/knative_standin.py) running the
  template's entry on ``PORT``, and an inference through the coordinator's URL, its workers
  invoked as a fan-out tree at the worker Service's URL (:mod:`fsd.launch.knative`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import kopf
import kubernetes  # type: ignore[import-untyped,unused-ignore]
import pytest

from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.k8s.access import ModelAccess
from fsd.k8s.config import DEFAULT_SECRETS, OperatorConfig
from fsd.k8s.handlers import reconcile, register
from fsd.k8s.knative import KnativeSettings, created, knative_service, service_state
from fsd.k8s.platforms import Target
from fsd.k8s.spec import parse_spec
from fsd.model.generate import generate
from fsd.store import ModelStore
from k8s_api import Cluster, add_login, wait_for
from knative_standin import GROUP, PLURAL, VERSION, KnativeStandIn, _refused
from knative_standin import register as declare_knative
from test_operator import Kube, condition, is_ready, model, secrets_dir, store_config

KNS = "fsd-fn"  # the Knative namespace (FSD_KNATIVE_NAMESPACE's default)
REFRESH = 0.3
NATS_IN_CLUSTER = "nats://fsd-nats.fsd:4222"
S3_IN_CLUSTER = "http://fsd-minio.fsd:9000"


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server) -> tuple[str, list[int]]:
    """A model in the store, cut for 2 workers, and its stored images' truth."""
    network, images = generate(256, 4, 20)
    name = f"kn-{uuid.uuid4().hex[:8]}"
    ModelStore(store_config(s3_server)).push(network, name, [2], ["min-comm"], images=images)
    return name, [int(c) for c in images.truth[4].tolist()]


def knative_config(s3: S3Server, **overrides: Any) -> OperatorConfig:
    settings: dict[str, Any] = {
        "store": store_config(s3),
        "secrets_dir": str(secrets_dir()),
        "retry_seconds": 0.2,
        "refresh_seconds": REFRESH,
        "platform_options": {"knative": KnativeSettings(namespace=KNS)},
        "shared": ModelAccess.parse("*/kn-*"),  # the `pushed` models, shared by the admin
        **overrides,
    }
    return OperatorConfig(**settings)


class KnativeKube(Kube):
    def services(self) -> dict[str, dict[str, Any]]:
        listed = cast(
            dict[str, Any], self.api.list_namespaced_custom_object(GROUP, VERSION, KNS, PLURAL)
        )
        return {s["metadata"]["name"]: dict(s) for s in listed.get("items", [])}

    def set_ready(self, name: str, ready: str, url: str = "", reason: str = "") -> None:
        """What Knative's controller writes (pkg/apis/serving/v1/service_lifecycle.go)."""
        generation = self.services()[name]["metadata"]["generation"]
        status = {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
            "url": url,
        }
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, KNS, PLURAL, name, {"status": status}
        )


@contextmanager
def knative_operator(config: OperatorConfig, *, operator: bool = True) -> Iterator[KnativeKube]:
    registry = register(kopf.OperatorRegistry(), refresh_every=REFRESH)
    add_login(registry)

    def prepare(url: str, memo: kopf.Memo) -> None:
        memo["config"] = dataclasses.replace(config, kube_url=url)
        assert cluster.api is not None
        declare_knative(cluster.api)  # Knative's CRDs, taken as given

    cluster = Cluster(registry, kopf.Memo(), prepare=prepare)
    cluster.start(operator=operator)
    try:
        yield KnativeKube(cluster)
        assert not operator or cluster.alive, "the operator died"
    finally:
        cluster.stop()


def env_of(service: dict[str, Any]) -> dict[str, str]:
    (container,) = service["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


# -- the desired state --------------------------------------------------------------------------


def test_knative_services_declare_scaling_concurrency_timeouts_and_secrets(
    s3_server: S3Server,
) -> None:
    config = knative_config(s3_server)
    spec = parse_spec(
        {
            "source": {"model": "m"},
            "workers": 8,
            "platform": "knative",
            "resources": {"memory": "2Gi", "cpu": "500m"},
            "scaling": {"min": 1, "max": 6},
        }
    )
    here = Target("gc", KNS, spec, "m", "uid-1")  # in the Knative namespace: owned by reference
    worker, coordinator = (knative_service(r, here, config) for r in ("worker", "coordinator"))
    for service in (worker, coordinator):
        assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
        assert service["metadata"]["namespace"] == KNS
        assert service["metadata"]["labels"]["fsd.dev/owner-uid"] == "uid-1"
        assert service["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "fsd-operator"
        assert service["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "fsd.dev/v1alpha1",
                "kind": "InferenceModel",
                "name": "gc",
                "uid": "uid-1",
                "controller": True,
            }
        ]
        template = service["spec"]["template"]
        assert _refused(created(service)["spec"]["template"]) == ""  # Knative's webhook admits it
        (container,) = template["spec"]["containers"]
        assert container["ports"] == [{"containerPort": 8080}]  # Knative's PORT
        assert container["resources"] == {
            "requests": {"memory": "2Gi", "cpu": "500m"},
            "limits": {"memory": "2Gi", "cpu": "500m"},
        }
        env = env_of(service)
        assert env["FSD_LAUNCHER"] == "knative"
        assert env["FSD_WORKER_URL"] == f"http://gc-{KNS}-worker.{KNS}.svc.cluster.local"
        assert env["FSD_MODELS"] == "m" and "PORT" not in env
        sources = template["spec"]["volumes"][0]["projected"]["sources"]
        mounted = [s["secret"]["name"] for s in sources]
        assert mounted == [s for s in DEFAULT_SECRETS if s != "fsd-gateway-password"]
        assert container["volumeMounts"][0] == {
            "name": "fsd-secrets",
            "mountPath": "/var/openfaas/secrets",
            "readOnly": True,
        }
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    notes = worker["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "2"  # ceil(8 workers / 4 in flight)
    assert notes["autoscaling.knative.dev/max-scale"] == "6"
    assert notes["autoscaling.knative.dev/target-burst-capacity"] == "-1"
    assert worker["spec"]["template"]["spec"]["containerConcurrency"] == 4  # FSD_MAX_INFLIGHT
    assert worker["spec"]["template"]["spec"]["timeoutSeconds"] == 305  # exec_timeout + 5 s
    assert env_of(worker)["max_inflight"] == "4" and env_of(worker)["exec_timeout"] == "300s"
    assert worker["metadata"]["labels"]["networking.knative.dev/visibility"] == "cluster-local"
    assert "networking.knative.dev/visibility" not in coordinator["metadata"]["labels"]
    assert coordinator["spec"]["template"]["spec"]["timeoutSeconds"] == 315
    assert env_of(coordinator)["FSD_MEMORY_MB"] == str(2048 // 4)
    # scale to zero: min-scale 0, and every worker's pod woken at once
    idle = dataclasses.replace(spec, scale_min=0)
    elsewhere = Target("gc", "team-a", idle, "m", "uid-2")  # another namespace: no reference
    worker = knative_service("worker", elsewhere, config)
    notes = worker["spec"]["template"]["metadata"]["annotations"]
    assert notes["autoscaling.knative.dev/min-scale"] == "0"
    assert notes["autoscaling.knative.dev/activation-scale"] == "2"
    coordinator = knative_service("coordinator", elsewhere, config)
    assert (
        coordinator["spec"]["template"]["metadata"]["annotations"][
            "autoscaling.knative.dev/min-scale"
        ]
        == "0"
    )
    assert "ownerReferences" not in worker["metadata"]  # the GC would delete it
    assert worker["metadata"]["labels"]["fsd.dev/owner-uid"] == "uid-2"
    assert worker["metadata"]["namespace"] == KNS  # never the model's namespace: the secrets
    # a Service's status is read defensively: odd values are "not ready yet", never a crash
    odd: Any
    for odd in ({"status": {"conditions": "x"}}, {"status": []}, {"metadata": 3}, {}):
        assert service_state(odd)[0] is None
    ready = {"type": "Ready", "status": "True"}
    stale: Any = {
        "metadata": {"generation": 2},
        "status": {"observedGeneration": 1, "conditions": [ready]},
    }
    assert service_state(stale)[0] is None  # an older generation's Ready is not this one's
    stale["status"]["observedGeneration"] = 2
    assert service_state(stale)[0] is True


# -- the operator against kmock -----------------------------------------------------------------


def test_operator_declares_knative_services_and_follows_their_ready_condition(
    s3_server: S3Server, pushed: tuple[str, list[int]]
) -> None:
    name, _ = pushed
    with knative_operator(knative_config(s3_server)) as kube:
        kube.create(model("alpha", {"model": name}, 2, namespace=KNS, platform="knative"))
        services: Any = wait_for(
            "two Knative Services", lambda: len(kube.services()) == 2 and kube.services()
        )
        coordinator, worker = services["alpha-fsd-fn-coordinator"], services["alpha-fsd-fn-worker"]
        uid = (kube.get("alpha", KNS) or {})["metadata"]["uid"]
        for service in (coordinator, worker):
            assert service["metadata"]["labels"]["fsd.dev/owner-uid"] == uid
            assert service["metadata"]["ownerReferences"][0]["uid"] == uid
            assert _refused(service["spec"]["template"]) == ""
        assert env_of(worker)["FSD_MODELS"] == name
        # the functions' Secrets in the Knative namespace, from the operator's files
        core = kubernetes.client.CoreV1Api(kube.api.api_client)
        made = {s.metadata.name for s in core.list_namespaced_secret(KNS).items if s.metadata}
        assert made == set(DEFAULT_SECRETS) - {"fsd-gateway-password"}

        status = kube.wait_status(
            "alpha", "Deploying", lambda s: s.get("phase") == "Deploying", namespace=KNS
        )
        assert condition(status, "Ready")["reason"] == "WaitingForReplicas"
        assert status["platform"] == "knative"

        published = "http://alpha-fsd-fn-coordinator.fsd-fn.example.com"
        kube.set_ready("alpha-fsd-fn-worker", "True")
        kube.set_ready("alpha-fsd-fn-coordinator", "True", url=published)
        status = kube.wait_status("alpha", "Ready", is_ready, namespace=KNS)
        assert status["coordinator"] == {"function": "alpha-fsd-fn-coordinator", "url": published}
        assert "readyWorkers" not in status  # a Knative Service reports no replicas

        kube.set_ready("alpha-fsd-fn-coordinator", "False", reason="RevisionFailed")
        status = kube.wait_status(
            "alpha", "not Ready", lambda s: s.get("phase") == "Deploying", namespace=KNS
        )
        ready = condition(status, "Ready")
        assert ready["reason"] == "ServiceNotReady" and "RevisionFailed" in ready["message"]

        # a Service deleted behind its back is declared again
        kube.api.delete_namespaced_custom_object(GROUP, VERSION, KNS, PLURAL, "alpha-fsd-fn-worker")
        wait_for("the worker Service again", lambda: "alpha-fsd-fn-worker" in kube.services())

        # a Service of that name someone else made is never taken over, nor deleted
        foreign = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Service",
            "metadata": {"name": "beta-default-coordinator", "namespace": KNS},
            "spec": {"template": {"spec": {"containers": [{"image": "theirs"}]}}},
        }
        kube.api.create_namespaced_custom_object(GROUP, VERSION, KNS, PLURAL, foreign)
        kube.create(model("beta", {"model": name}, 2, platform="knative"))
        status = kube.wait_status("beta", "Degraded", lambda s: s.get("phase") == "Degraded")
        assert condition(status, "Degraded")["reason"] == "FunctionNameTaken"
        kube.delete("beta")
        kube.delete("alpha", KNS)
        wait_for("alpha released", lambda: kube.get("alpha", KNS) is None)
        wait_for("beta released", lambda: kube.get("beta") is None)
        left = kube.services()
        assert list(left) == ["beta-default-coordinator"]  # theirs, untouched
        assert left["beta-default-coordinator"]["spec"] == foreign["spec"]


def test_a_withdrawn_model_takes_its_knative_services_down(
    s3_server: S3Server, pushed: tuple[str, list[int]]
) -> None:
    """The reconcile itself, called as kopf calls it: a model the namespace may serve gets its
    Services; once that share is withdrawn, the next reconcile removes them (ModelNotAllowed)."""
    name, _ = pushed
    config = knative_config(s3_server, shared=ModelAccess.parse(f"team-a/{name}"))
    with knative_operator(config, operator=False) as kube:
        config = dataclasses.replace(config, kube_url=kube.cluster.url)
        spec: Any = {"source": {"model": name}, "workers": 2, "platform": "knative"}
        meta: Any = {"generation": 1, "uid": "u-7", "name": "w", "namespace": "team-a"}

        def call(given: OperatorConfig) -> kopf.Patch:
            patch = kopf.Patch()
            status: Any = {}
            reconcile(
                spec=spec, meta=meta, status=status, name="w", namespace="team-a", patch=patch,
                memo=kopf.Memo(config=given), retry=0, logger=logging.getLogger("test"),
            )  # fmt: skip
            return patch

        patch = call(config)
        assert set(kube.services()) == {"w-team-a-coordinator", "w-team-a-worker"}
        assert patch["status"]["platform"] == "knative"
        with pytest.raises(kopf.PermanentError, match="ModelNotAllowed"):
            call(dataclasses.replace(config, shared=ModelAccess()))
        assert kube.services() == {}


# -- end to end: the operator, the stand-in, an inference -------------------------------------


def test_an_inference_through_the_knative_coordinator_is_exact(
    s3_server: S3Server, nats_server: NatsServer, pushed: tuple[str, list[int]]
) -> None:
    name, truth = pushed
    values = {
        "fsd-nats-token": nats_server.token,
        "fsd-s3-access-key": s3_server.access_key,
        "fsd-s3-secret-key": s3_server.secret_key,
        "fsd-gateway-password": "not-mounted-on-knative",
        "fsd-run-key": secrets.token_hex(32),
    }
    config = knative_config(
        s3_server,
        secrets_dir=str(secrets_dir(values)),
        transport_env={"FSD_NATS_URL": NATS_IN_CLUSTER, "FSD_S3_ENDPOINT": S3_IN_CLUSTER},
        fanout=1,  # 2 workers: the coordinator invokes worker 0, which invokes worker 1
    )
    addresses = {NATS_IN_CLUSTER: nats_server.url, S3_IN_CLUSTER: s3_server.endpoint}
    with (
        knative_operator(config) as kube,
        KnativeStandIn(kube.cluster.url, KNS, addresses) as knative,
    ):
        kube.create(model("omega", {"model": name}, 2, platform="knative", channel="nats"))
        status = kube.wait_status("omega", "Ready", is_ready, timeout=120.0)
        url = status["coordinator"]["url"]
        assert url.startswith("http://127.0.0.1:")  # the stand-in's ingress, status.url
        request = {"workers": 2, "channel": "nats", "images": {"stored": True}}
        answer = post(url, request)
        assert answer["categories"] == truth and answer["correct"] is True
        assert knative.rejected == []
        # the container listens on PORT (no --port, no FSD_PORT) and knows its platform
        worker = "omega-default-worker"
        environ = _environ(knative.pods.pid(worker))
        assert environ["PORT"] == knative.pods.url(worker).rstrip("/").rpartition(":")[2]
        assert "FSD_PORT" not in environ and environ["FSD_LAUNCHER"] == "knative"
        assert sorted(p.name for p in Path(environ["FSD_SECRETS_DIR"]).iterdir()) == sorted(
            set(DEFAULT_SECRETS) - {"fsd-gateway-password"}
        )
        kube.delete("omega")
        wait_for("omega deleted", lambda: kube.get("omega") is None, timeout=60.0)
        wait_for("no process left", lambda: knative.names == [], timeout=60.0)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as resp:
            return cast(dict[str, Any], json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"HTTP {exc.code}: {exc.read()[:2000]!r}") from None


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (part.decode().partition("=") for part in raw.split(b"\0") if part)
    return {k: v for k, _, v in pairs}
