"""docs/deploy-kubernetes.md followed step by step, against the strictest stand-ins that run here.

The page's steps, and what stands in for what it needs (nothing here has Docker or a network):

- the cluster (steps 0-1): kmock's Kubernetes API emulator with what an API server keeps
  (tests/k8s/k8s_api.py :class:`~k8s_api.ApiServer`) and the built-in kinds of a real cluster;
- OpenFaaS (step 2): its ``basic-auth`` Secret as the OpenFaaS chart creates it, and the gateway
  stand-in (tests/k8s/k8s_gateway.py, rules from faas-netes' source) whose functions run as local
  processes of the template's entry (tests/k8s/function_host.py);
- the images (step 3): none; the function host serves ``functions/<role>`` as the image would;
- ``helm install fsd charts/fsd`` (step 5): the real Helm library (helm-sdkpy,
  ``HELM_DRIVER=memory``) installing the chart into that API. Then what the cluster would run:
  the chart's NATS and MinIO (the nats subchart is not vendored: no network) are a real
  nats-server and a real SeaweedFS started with the credentials of the Secret the chart created;
  the operator runs in this process (kopf) with the environment and the mounted secret files the
  chart rendered for its Deployment, read back from the API;
- the upload (step 6), ``kubectl apply``/``wait`` (step 7), ``faas-cli invoke`` (step 8) and the
  deletion (step 10): the commands the page shows, parsed from it, done with the official clients.

Deviations, all in time only: the operator's readiness timer and retry delay are set through the
chart's own ``operator.extraEnv`` (0.5 s instead of 30 s and 15 s), and functions stop without
their shutdown delay (see tests/k8s/function_host.py). ``lastLatencySeconds`` is off (no Prometheus
scrapes the local functions).

Also here: a unit test of :class:`function_host.LocalFunctionHost` alone, and the child process that
runs Helm (``python tests/k8s/test_walkthrough.py URL VALUES.json OUT.json``: Helm reads HELM_DRIVER
when its library loads, see tests/k8s/test_chart.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import yaml  # type: ignore[import-untyped]

from fsd.embedded.nats import NatsServer
from fsd.embedded.s3 import S3Server
from fsd.k8s import GROUP, PLURAL, VERSION
from function_host import LocalFunctionHost
from paths import ROOT, script_env
from proctree import alive

DOC = ROOT / "docs" / "deploy-kubernetes.md"
CHART = ROOT / "charts" / "fsd"
EXAMPLE = ROOT / "examples" / "inferencemodel-gc1024.yaml"
REQUEST = ROOT / "examples" / "request.json"
RELEASE = NAMESPACE = "fsd"  # helm install fsd charts/fsd -n fsd
OPENFAAS = "openfaas"
#: the in-cluster addresses of the page's services (step 5's table, OpenFaaS's defaults)
GATEWAY = "http://gateway.openfaas:8080"
SECOND_NAMESPACE = "team-b"
TICK = "0.5"  # the operator's timer and retry delay here (FSD_OPERATOR_*_SECONDS)
READY_TIMEOUT = 90.0  # bounds a wait; never asserted on
#: what the chart's operator may read as files (contract 4), mapped onto our servers' settings
SECRET_KEYS = (
    "fsd-nats-token",
    "fsd-s3-access-key",
    "fsd-s3-secret-key",
    "fsd-gateway-password",
    "fsd-run-key",
)


# -- the page's commands ---------------------------------------------------------------------------


def doc_commands(doc: Path = DOC) -> list[str]:
    """Every line of the page's ``sh`` blocks, continuation lines joined."""
    text = doc.read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip()]
    return lines


def doc_command(prefix: str, doc: Path = DOC) -> list[str]:
    """The page's one command starting with ``prefix``, split as the shell would."""
    found = [c for c in doc_commands(doc) if c.startswith(prefix)]
    assert found, f"{doc.name} no longer says `{prefix} ...`"
    return shlex.split(found[0].split(" #")[0])


# -- the cluster: kmock's API with the built-in kinds, Helm, and the operator ---------------------


def helm_install(api_url: str, values: dict[str, Any], work: Path) -> dict[str, Any]:
    """``helm install fsd charts/fsd -n fsd --create-namespace`` into the API at ``api_url``."""
    pytest.importorskip("helm_sdkpy", reason="helm-sdkpy missing: make install adds it")
    (work / "values.json").write_text(json.dumps(values))
    out = work / "release.json"
    proc = subprocess.run(
        [sys.executable, __file__, api_url, str(work / "values.json"), str(out)],
        env=script_env(HELM_DRIVER="memory"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release: dict[str, Any] = json.loads(out.read_text())
    assert "error" not in release, release["error"]
    return release


class Kube:
    """``kubectl``: the official client against the emulated API."""

    def __init__(self, url: str) -> None:
        import kubernetes  # type: ignore[import-untyped,unused-ignore]

        self.client = kubernetes.client
        api = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=url))
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def create_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        encoded: dict[str, bytes | str] = {
            k: base64.b64encode(v.encode()).decode() for k, v in data.items()
        }
        meta = self.client.V1ObjectMeta(name=name, namespace=namespace)
        body = self.client.V1Secret(
            api_version="v1", kind="Secret", metadata=meta, type="Opaque", data=encoded
        )
        self.core.create_namespaced_secret(namespace, body)

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        found = self.core.read_namespaced_secret(name, namespace)
        return {k: base64.b64decode(v).decode() for k, v in (found.data or {}).items()}

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.apps.read_namespaced_deployment(name, namespace)
        return cast(dict[str, Any], self.apps.api_client.sanitize_for_serialization(found))

    def apply(self, body: dict[str, Any], namespace: str) -> None:
        body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except self.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cast(dict[str, Any], found))

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def wait_for(what: str, probe: Any, timeout: float = READY_TIMEOUT) -> Any:
    from k8s_api import wait_for as poll

    return poll(what, probe, timeout, interval=0.1)


def pod_environment(kube: Kube, deployment: dict[str, Any], secrets_dir: Path) -> dict[str, str]:
    """The operator container's environment as the kubelet gives it, and its mounted secrets.

    ``value``s as written, ``secretKeyRef``s read from the API, ``fieldRef: metadata.namespace``;
    each ``projected`` secret volume written as files into ``secrets_dir`` and its mount path
    replaced by that folder wherever the environment names it (FSD_SECRETS_DIR).
    """
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    namespace = deployment["metadata"]["namespace"]
    env: dict[str, str] = {}
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = str(var.get("value", ""))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = kube.secret(namespace, ref["name"])[ref["key"]]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
        else:
            raise AssertionError(f"unexpected env source in the chart: {var}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "projected" not in volume and "secret" not in volume:
            continue
        sources = volume.get("projected", {}).get("sources") or [{"secret": volume.get("secret")}]
        for source in sources:
            ref = source["secret"]
            data = kube.secret(namespace, ref.get("name") or ref["secretName"])
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                path = secrets_dir / item["path"]
                path.touch(mode=0o600)
                path.write_text(data[item["key"]])
        env = {k: v.replace(mount["mountPath"], str(secrets_dir)) for k, v in env.items()}
    return env


class HelmCluster:
    """The emulated API (with the kinds Helm installs) and, once started, the operator."""

    def __init__(self) -> None:
        import kmock
        import kopf

        from fsd.k8s.handlers import register
        from k8s_api import ApiServer, Cluster, add_login, core_v1_discovery, declare

        self._kopf = kopf

        class _Cluster(Cluster):
            async def _serve_api(self) -> None:
                self._api_loop = asyncio.get_running_loop()
                self._api_stop = asyncio.Event()
                async with ApiServer() as api, kmock.Server(api):
                    api.resources.load_bundled()  # the built-in kinds of a real cluster
                    declare(api)
                    api["get /api/v1"] << core_v1_discovery(api)
                    self.api = api
                    self.url = str(api.url).rstrip("/")
                    self._api_ready.set()
                    await self._api_stop.wait()

            def start_operator(self) -> None:
                self._thread.start()

        self.registry = kopf.OperatorRegistry()
        self._register = register
        self._add_login = add_login
        self.memo = kopf.Memo()
        self.cluster = _Cluster(self.registry, self.memo)
        self.url = ""

    def start(self) -> HelmCluster:
        self.cluster.start(operator=False)
        self.url = self.cluster.url
        return self

    def start_operator(self, config: Any, refresh_every: float) -> None:
        self._register(self.registry, refresh_every=refresh_every)
        self._add_login(self.registry)
        self.memo["config"] = config
        self.cluster.start_operator()  # type: ignore[attr-defined]

    @property
    def alive(self) -> bool:
        return bool(self.cluster.alive)

    def stop(self) -> None:
        self.cluster.stop()


# -- the gateway stand-in with the function host plugged in ----------------------------------------


def hosted_gateway(host: LocalFunctionHost, password: str) -> Any:
    """The gateway stand-in (tests/k8s/k8s_gateway.py) serving ``host``'s functions."""
    from k8s_gateway import FakeGateway

    return FakeGateway(host=host, password=password).start()


def invoke(gateway_url: str, name: str, body: bytes, password: str) -> tuple[int, bytes]:
    """``faas-cli invoke NAME < body``: POST /function/NAME through the gateway."""
    request = urllib.request.Request(f"{gateway_url}/function/{name}", data=body, method="POST")
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=120) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


# -- the walkthrough -------------------------------------------------------------------------------


def is_ready(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    status = ((kube.get(namespace, name) or {}).get("status")) or {}
    return status if status.get("phase") == "Ready" else None


def test_walkthrough_of_deploy_kubernetes(shared_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("kmock")
    from fsd.k8s.config import OperatorConfig, refresh_seconds
    from fsd.k8s.names import function_name

    with ExitStack() as stack:
        # 0. Tools, 1. A kind cluster: the emulated API
        cluster = stack.enter_context(_started(HelmCluster()))
        kube = Kube(cluster.url)

        # 2. OpenFaaS CE: its basic-auth Secret (generateBasicAuth=true) and the gateway
        gateway_password = secrets.token_urlsafe(24)
        kube.create_secret(
            OPENFAAS,
            "basic-auth",
            {"basic-auth-user": "admin", "basic-auth-password": gateway_password},
        )
        addresses: dict[str, str] = {}  # in-cluster -> local, filled in as services start
        host = stack.enter_context(LocalFunctionHost(addresses, timeout=120.0))
        gateway = hosted_gateway(host, gateway_password)
        stack.callback(gateway.stop)
        addresses[GATEWAY] = gateway.url

        # 3. Build the images: the host serves functions/<role> with the template's entry
        # 4. Fetch the NATS chart: not vendored here (no network); its NATS is a real server below

        # 5. Install fsd
        assert doc_command("helm install fsd charts/fsd")[:7] == [
            "helm", "install", "fsd", "charts/fsd", "-n", "fsd", "--create-namespace"
        ]  # fmt: skip
        values = {
            "operator": {
                "extraEnv": [
                    {"name": "FSD_OPERATOR_REFRESH_SECONDS", "value": TICK},
                    {"name": "FSD_OPERATOR_RETRY_SECONDS", "value": TICK},
                ]
            }
        }
        helm_install(cluster.url, values, tmp_path)  # (no --create-namespace: kmock has none)
        credentials = kube.secret(NAMESPACE, f"{RELEASE}-credentials")
        # (booleans first: a failure shows no credential)
        copied = credentials["fsd-gateway-password"] == gateway_password
        assert copied, "the gateway password is not OpenFaaS's basic-auth one"
        run_key = len(credentials.get("fsd-run-key", "")) >= 32
        assert run_key, f"no fsd-run-key of 32+ characters in the Secret: {sorted(credentials)}"
        # the chart's NATS and MinIO, with the chart's credentials
        nats = NatsServer(token=credentials["fsd-nats-token"])
        s3 = S3Server()
        s3.access_key = credentials["fsd-s3-access-key"]
        s3.secret_key = credentials["fsd-s3-secret-key"]
        stack.enter_context(nats.start())
        stack.enter_context(s3.start(timeout=30.0))
        # the operator, as its Deployment says
        deployment = kube.deployment(NAMESPACE, f"{RELEASE}-operator")
        mounted = tmp_path / "operator-secrets"
        mounted.mkdir(mode=0o700)
        env = pod_environment(kube, deployment, mounted)
        in_cluster_s3 = env["FSD_S3_ENDPOINT"]
        addresses[env.get("FSD_NATS_URL", "nats://nats.fsd:4222")] = nats.url
        addresses[in_cluster_s3] = s3.endpoint
        # what the operator itself dials is reached locally; what it hands to the functions
        # stays in-cluster (the host maps it), as FSD_FUNCTION_S3_ENDPOINT says
        env.setdefault("FSD_FUNCTION_S3_ENDPOINT", in_cluster_s3)
        for var in ("FSD_OPENFAAS_URL", "FSD_S3_ENDPOINT"):
            env[var] = host.local(env[var])
        env["FSD_KUBE_URL"] = cluster.url  # what in-cluster config finds in a pod
        env["FSD_PROMETHEUS_URL"] = ""  # lastLatencySeconds off: nothing scrapes the functions
        config = OperatorConfig.from_env(env)
        cluster.start_operator(config, refresh_seconds(env))

        # 6. Upload the Graph Challenge folder (aws s3 cp --recursive ../shared/... s3://fsd/...)
        cp = doc_command("aws s3 cp --recursive")
        source, target = cp[-2], cp[-1]
        assert source.rstrip("/").endswith("shared/graphchallenge"), cp
        bucket, _, prefix = target.removeprefix("s3://").partition("/")
        client = s3.client()
        if not client.bucket_exists(bucket):  # aws s3 mb s3://fsd || true
            client.make_bucket(bucket)
        for path in sorted(shared_dir.rglob("*")):
            if path.is_file():
                key = f"{prefix}{path.relative_to(shared_dir)}"
                client.fput_object(bucket, key, str(path))
        uploaded = sorted(o.object_name or "" for o in client.list_objects(bucket, recursive=True))

        # 7. Declare the model (kubectl apply -f examples/..., kubectl wait ... Ready)
        assert doc_command("kubectl apply -f examples/inferencemodel-gc1024.yaml")
        example = yaml.safe_load(EXAMPLE.read_text())
        name, namespace = example["metadata"]["name"], example["metadata"]["namespace"]
        kube.apply(example, namespace)
        status = wait_for(f"{namespace}/{name} Ready", lambda: is_ready(kube, namespace, name))
        coordinator = function_name(name, namespace, "coordinator")
        assert coordinator == "gc1024-default-coordinator"  # contract 1
        assert status["coordinator"]["function"] == coordinator
        url_name = status["coordinator"]["url"].rpartition("/function/")[2]
        assert url_name in (coordinator, f"{coordinator}.{env['FSD_FUNCTION_NAMESPACE']}")

        # 8. Invoke (faas-cli invoke <the documented name> < examples/request.json)
        invoked = doc_command("faas-cli invoke")
        assert invoked[2] == coordinator, invoked
        code, body = invoke(gateway.url, invoked[2], REQUEST.read_bytes(), gateway_password)
        answer = json.loads(body)
        assert code == 200, answer
        truth = truth_categories(shared_dir)
        assert answer["categories"] == truth and len(truth) == 73
        assert answer["correct"] is True
        # ... or `fsd invoke --inference-model gc1024 --namespace default --request ...`
        cli = doc_command("fsd invoke")
        env_cli = {**os.environ, "OPENFAAS_URL": gateway.url}
        env_cli["OPENFAAS_PASSWORD"] = gateway_password
        done = subprocess.run(
            [sys.executable, "-m", "fsd.cli", *cli[1:], "--json"],
            check=False,
            cwd=ROOT,
            env=env_cli,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.splitlines()[-1])["categories"] == truth

        # (the issue) the same name in another namespace: its own functions, and it answers too
        # (kubectl create namespace team-b: kmock keeps no namespaces, nor needs them)
        kube.apply(example, SECOND_NAMESPACE)
        second = wait_for(
            f"{SECOND_NAMESPACE}/{name} Ready", lambda: is_ready(kube, SECOND_NAMESPACE, name)
        )
        other = function_name(name, SECOND_NAMESPACE, "coordinator")
        assert second["coordinator"]["function"] == other != coordinator
        assert second["modelName"] == f"{SECOND_NAMESPACE}.{name}" != status["modelName"]
        code, body = invoke(gateway.url, other, REQUEST.read_bytes(), gateway_password)
        assert code == 200, body[:500]
        assert json.loads(body)["categories"] == truth
        assert len(host.names) == 4  # two coordinators, two workers
        # and the first model's functions were left alone: it still answers as before
        code, body = invoke(gateway.url, coordinator, REQUEST.read_bytes(), gateway_password)
        assert code == 200, body[:500]
        assert json.loads(body)["categories"] == truth
        pids = host.pids()

        # 10. Uninstall: the models first (kubectl delete -f ... --wait), so nothing is left
        assert doc_command("kubectl delete -f examples/inferencemodel-gc1024.yaml")
        for ns in (namespace, SECOND_NAMESPACE):
            kube.delete(ns, name)
        for ns in (namespace, SECOND_NAMESPACE):
            wait_for(f"{ns}/{name} deleted", lambda ns=ns: kube.get(ns, name) is None)
        assert cluster.alive, "the operator died"
        assert gateway.functions == {}  # no function left, none of anybody else's touched
        assert host.names == []
        assert [p for p in pids if alive(p)] == []  # no function process left
        left = sorted(o.object_name or "" for o in client.list_objects(bucket, recursive=True))
        assert left == uploaded  # the operator's models gone, the user's folder kept
        assert not [k for k in left if k.startswith("models/")]
        # the functions' secrets are the operator's shared ones (contract 4), in the function
        # namespace: they outlive the models, namespace fsd and OpenFaaS's uninstall, so step 10
        # deletes them there (`kubectl -n openfaas-fn delete secret ...`)
        assert set(gateway.secrets) == set(SECRET_KEYS)
        assert gateway.rejected == []


def truth_categories(shared_dir: Path) -> list[int]:
    from fsd.model import load_images

    return [int(c) for c in load_images(shared_dir, 1024).truth[120].tolist()]


@contextmanager
def _started(cluster: HelmCluster) -> Iterator[HelmCluster]:
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# -- LocalFunctionHost alone -----------------------------------------------------------------------


def test_function_host_serves_deployed_functions(
    nats_server: NatsServer, s3_server: S3Server, tmp_path: Path
) -> None:
    """A worker and a coordinator from the operator's own FunctionDeployments: served, invoked
    through the host, restarted on a change, removed, and no process left."""
    from fsd.k8s.config import OperatorConfig
    from fsd.k8s.openfaas import function_deployments
    from fsd.k8s.spec import parse_spec
    from fsd.model.generate import generate
    from fsd.store import ModelStore, StoreConfig

    store = StoreConfig.from_env(
        {
            "FSD_S3_ENDPOINT": s3_server.endpoint,
            "FSD_S3_BUCKET": "fsd",
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        },
    )
    network, images = generate(256, 4, 20)
    model = f"host-{uuid.uuid4().hex[:8]}"
    ModelStore(store).push(network, model, [2], ["min-comm"], images=images)
    in_cluster_s3 = "http://fsd-minio.fsd:9000"
    config = OperatorConfig(
        store=store,
        transport_env={
            "FSD_NATS_URL": "nats://fsd-nats.fsd:4222",
            "FSD_S3_ENDPOINT": in_cluster_s3,
        },
    )
    spec = parse_spec({"source": {"model": model}, "workers": 2, "channel": "nats"})
    coordinator, worker = function_deployments(
        name=model, namespace="default", spec=spec, config=config, store_model=model
    )
    given = {
        "fsd-nats-token": nats_server.token,
        "fsd-s3-access-key": s3_server.access_key,
        "fsd-s3-secret-key": s3_server.secret_key,
        "fsd-gateway-password": "gateway-password",
        "fsd-run-key": secrets.token_hex(32),
        "not-named": "a secret the deployments do not name",
    }
    addresses = {"nats://fsd-nats.fsd:4222": nats_server.url, in_cluster_s3: s3_server.endpoint}
    with LocalFunctionHost(addresses, timeout=60.0) as host:
        assert host.available(worker["service"]) == 0  # not deployed
        host.deployed(worker, given)
        host.wait_available(worker["service"])
        # the coordinator reaches the worker at its gateway URL: here, the worker's process
        addresses[worker["envVars"]["FSD_WORKER_URL"]] = host.url(worker["service"]).rstrip("/")
        host.deployed(coordinator, given)
        host.wait_available(coordinator["service"])
        assert host.available(coordinator["service"]) == host.available(worker["service"]) == 1

        request = {"model": model, "workers": 2, "channel": "nats", "images": {"stored": True}}
        status, headers, body = host.forward(
            coordinator["service"],
            "POST",
            "/",
            {"Content-Type": "application/json", "Connection": "close"},
            json.dumps(request).encode(),
        )
        assert status == 200, body[:500] + host.log_of(coordinator["service"]).encode()[-2000:]
        answer = json.loads(body)
        assert answer["categories"] == [int(c) for c in images.truth[4].tolist()]
        assert answer["correct"] is True
        assert headers["Content-Type"].startswith("application/json")

        # only the named secrets are mounted; the process has the deployment's env, mapped
        pid = host.pid(coordinator["service"])
        environ = _environ(pid)
        secrets_dir = Path(environ["FSD_SECRETS_DIR"])
        assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(coordinator["secrets"])
        assert environ["FSD_NATS_URL"] == nats_server.url
        assert environ["FSD_S3_ENDPOINT"] == s3_server.endpoint
        assert environ["FSD_MODELS"] == model
        assert "AWS_SECRET_ACCESS_KEY" not in environ  # only as the mounted file

        # the same deployment again: nothing restarts; a changed secret: a new process
        host.deployed(coordinator, given)
        assert pid in host.pids()
        host.deployed(coordinator, {**given, "fsd-run-key": secrets.token_hex(32)})
        assert pid not in host.pids() and not alive(pid)
        host.wait_available(coordinator["service"])

        pids = host.pids()
        host.removed(worker["service"])
        assert host.available(worker["service"]) == 0
        status, headers, body = host.forward(coordinator["service"], "POST", "/", {}, b"{}")
        assert status == 400  # the coordinator still answers; it refuses an empty request
        host.removed(coordinator["service"])
        host.removed(coordinator["service"])  # twice: nothing to do
        assert host.names == [] and [p for p in pids if alive(p)] == []
        with pytest.raises(KeyError):
            host.forward(coordinator["service"], "GET", "/", {}, b"")

        # close() stops what is still running
        host.deployed(worker, given)
        last = host.pids()
    assert last and [p for p in last if alive(p)] == []


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (part.decode().partition("=") for part in raw.split(b"\0") if part)
    return {k: v for k, _, v in pairs}


# -- the child process: helm install into the API (HELM_DRIVER=memory) -----------------------------


async def _install(api_url: str, values: dict[str, Any]) -> dict[str, Any]:
    import helm_sdkpy  # type: ignore[import-untyped]

    from test_chart import _kubeconfig

    config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=_kubeconfig(api_url))
    try:
        release = await helm_sdkpy.Install(config).run(
            RELEASE, str(CHART), values=values or None, wait=False, timeout=60
        )
    except helm_sdkpy.HelmError as exc:
        return {"error": str(exc)}
    return {"manifest": release["manifest"], "notes": release["info"].get("notes", "")}


def _main(api_url: str, values_file: str, out_file: str) -> None:
    assert os.environ.get("HELM_DRIVER") == "memory", "run with HELM_DRIVER=memory"
    values = json.loads(Path(values_file).read_text())
    Path(out_file).write_text(json.dumps(asyncio.run(_install(api_url, values))))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _main(sys.argv[1], sys.argv[2], sys.argv[3])
