"""docs/deploy-knative.md followed step by step, against kmock and the Knative stand-in.

The machinery is tests/k8s/test_walkthrough.py's (the chart installed by the real Helm library into
kmock's API, the operator run with the environment and secret files the chart renders for its
pod, a real nats-server and SeaweedFS with the chart's credentials); what differs is Knative:

- Knative Serving (step 2): its Service resource declared in the API, as its CRDs would be (the
  chart takes them as given), and tests/k8s/knative_standin.py for its controllers, activator and
  queue-proxy: it runs each Service's container as the template's server on ``PORT``, routes
  the Services' URLs and writes their ``Ready`` condition and ``status.url``;
- the images (step 3): none; the stand-in serves ``functions/<role>`` as the image would;
- ``helm install ... --set platform=knative`` (step 5), ``kubectl apply``/``wait`` (step 7), the
  ``curl`` of the coordinator's URL (step 8) and the deletion (step 9): the page's commands,
  parsed from it (the ``--set`` values as Helm reads them), done with the official clients.

Deviations, in time only: the operator's timer and retry delay are 0.5 s (``operator.extraEnv``);
``lastLatencySeconds`` is off (no Prometheus).
"""

from __future__ import annotations

import itertools
import json
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from paths import ROOT
from test_walkthrough import (
    DOC as KUBERNETES_DOC,
)
from test_walkthrough import (
    NAMESPACE,
    RELEASE,
    REQUEST,
    TICK,
    HelmCluster,
    Kube,
    _started,
    doc_command,
    helm_install,
    is_ready,
    pod_environment,
    truth_categories,
    wait_for,
)

DOC = ROOT / "docs" / "deploy-knative.md"
EXAMPLE = ROOT / "examples" / "inferencemodel-gc1024-knative.yaml"


def helm_sets(command: list[str]) -> dict[str, Any]:
    """The values of a ``helm install``'s ``--set a.b=c`` flags, nested as Helm nests them."""
    values: dict[str, Any] = {}
    for flag, value in itertools.pairwise(command):
        if flag != "--set":
            continue
        key, _, text = value.partition("=")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = text
    return values


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """``curl -s -H 'Content-Type: application/json' --data @FILE $URL``."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=300) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def test_walkthrough_of_deploy_knative(shared_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("kmock")
    from fsd.k8s.config import OperatorConfig, refresh_seconds
    from knative_standin import GROUP, PLURAL, VERSION, KnativeStandIn
    from knative_standin import register as declare_knative

    with ExitStack() as stack:
        # 1. A kind cluster: the emulated API; 2. Knative Serving: its Service resource
        cluster = stack.enter_context(_started(HelmCluster()))
        assert cluster.cluster.api is not None
        declare_knative(cluster.cluster.api, secrets=False)  # Secrets are built in here
        kube = Kube(cluster.url)

        # 5. Install fsd with platform=knative (kubectl create namespace: kmock needs none)
        assert doc_command("kubectl create namespace fsd-fn", DOC)
        install = doc_command("helm install fsd charts/fsd", DOC)
        assert install[:7] == [
            "helm", "install", "fsd", "charts/fsd", "-n", "fsd", "--create-namespace"
        ]  # fmt: skip
        values = helm_sets(install)
        assert values["platform"] == "knative", install
        values.setdefault("operator", {})["extraEnv"] = [
            {"name": "FSD_OPERATOR_REFRESH_SECONDS", "value": TICK},
            {"name": "FSD_OPERATOR_RETRY_SECONDS", "value": TICK},
        ]
        helm_install(cluster.url, values, tmp_path)
        credentials = kube.secret(NAMESPACE, f"{RELEASE}-credentials")
        nats = NatsServer(token=credentials["fsd-nats-token"])
        s3 = S3Server()
        s3.access_key = credentials["fsd-s3-access-key"]
        s3.secret_key = credentials["fsd-s3-secret-key"]
        stack.enter_context(nats.start())
        stack.enter_context(s3.start(timeout=30.0))
        deployment = kube.deployment(NAMESPACE, f"{RELEASE}-operator")
        mounted = tmp_path / "operator-secrets"
        mounted.mkdir(mode=0o700)
        env = pod_environment(kube, deployment, mounted)
        in_cluster_s3 = env["FSD_S3_ENDPOINT"]
        addresses = {env["FSD_NATS_URL"]: nats.url, in_cluster_s3: s3.endpoint}
        env.setdefault("FSD_FUNCTION_S3_ENDPOINT", in_cluster_s3)
        env["FSD_S3_ENDPOINT"] = s3.endpoint  # what the operator itself dials
        env["FSD_KUBE_URL"] = cluster.url  # what in-cluster config finds in a pod
        env["FSD_PROMETHEUS_URL"] = ""
        config = OperatorConfig.from_env(env)
        assert (config.platform, env["FSD_KNATIVE_NAMESPACE"]) == ("knative", "fsd-fn")
        knative = KnativeStandIn(cluster.url, env["FSD_KNATIVE_NAMESPACE"], addresses)
        stack.enter_context(knative)
        cluster.start_operator(config, refresh_seconds(env))

        # 6. Upload the Graph Challenge folder (deploy-kubernetes.md's step 6)
        cp = doc_command("aws s3 cp --recursive", KUBERNETES_DOC)
        bucket, _, prefix = cp[-1].removeprefix("s3://").partition("/")
        client = s3.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        for path in sorted(shared_dir.rglob("*")):
            if path.is_file():
                client.fput_object(bucket, f"{prefix}{path.relative_to(shared_dir)}", str(path))
        uploaded = sorted(o.object_name or "" for o in client.list_objects(bucket, recursive=True))

        # 7. Declare the model (kubectl apply -f ..., kubectl wait ... Ready)
        apply = doc_command("kubectl apply -f examples/", DOC)
        assert apply[-1] == str(EXAMPLE.relative_to(ROOT)), apply
        example = yaml.safe_load(EXAMPLE.read_text())
        assert example["spec"]["platform"] == "knative"
        name, namespace = example["metadata"]["name"], example["metadata"]["namespace"]
        kube.apply(example, namespace)
        status = wait_for(f"{namespace}/{name} Ready", lambda: is_ready(kube, namespace, name))
        assert status["platform"] == "knative"
        coordinator = status["coordinator"]
        assert coordinator["function"] == "gc1024-default-coordinator"
        services: Any = kube.custom.list_namespaced_custom_object(GROUP, VERSION, "fsd-fn", PLURAL)
        assert sorted(s["metadata"]["name"] for s in services["items"]) == [
            "gc1024-default-coordinator",
            "gc1024-default-worker",
        ]

        # 8. Invoke: URL from status.coordinator.url, then curl --data @examples/request.json
        exported = doc_command("export URL=", DOC)
        assert "{.status.coordinator.url}" in " ".join(exported), exported
        curl = doc_command("curl -s -H 'Content-Type: application/json'", DOC)
        assert curl[-2:] == ["@examples/request.json", "$URL"], curl
        code, body = post(coordinator["url"], REQUEST.read_bytes())
        answer = json.loads(body)
        assert code == 200, answer
        truth = truth_categories(shared_dir)
        assert answer["categories"] == truth and answer["correct"] is True
        assert knative.rejected == []

        # 9. Remove: the model first (kubectl delete -f ... --wait)
        assert doc_command("kubectl delete -f examples/inferencemodel-gc1024-knative.yaml", DOC)
        kube.delete(namespace, name)
        wait_for(f"{namespace}/{name} deleted", lambda: kube.get(namespace, name) is None)
        assert cluster.alive, "the operator died"
        services = kube.custom.list_namespaced_custom_object(GROUP, VERSION, "fsd-fn", PLURAL)
        assert services["items"] == []
        wait_for("no function process left", lambda: knative.names == [])
        left = sorted(o.object_name or "" for o in client.list_objects(bucket, recursive=True))
        assert left == uploaded  # the operator's model gone, the user's folder kept
        # the functions' Secrets stay in fsd-fn (step 9 deletes them by hand): no gateway one
        listed = kube.core.list_namespaced_secret("fsd-fn").items
        kept = {s.metadata.name for s in listed if s.metadata}
        assert kept == {"fsd-nats-token", "fsd-s3-access-key", "fsd-s3-secret-key", "fsd-run-key"}
        removed = doc_command("kubectl -n fsd-fn delete secret", DOC)
        assert set(removed[5:]) == kept, removed
