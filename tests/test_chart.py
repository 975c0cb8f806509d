"""The Helm chart charts/fsd, checked with the real Helm library (helm-sdkpy: Helm v4 in a shared
library, no helm binary) and the Kubernetes OpenAPI schemas (kubernetes-validate).

* **Lint**: helm-sdkpy's ``Lint`` takes a chart folder and no values, so each variant is linted on a
  copy of the chart whose values.yaml holds the variant merged over the defaults (what
  ``helm lint -f variant.yaml`` checks: the same merged values against values.schema.json, and the
  templates rendered with them).
* **Render**: helm-sdkpy has no ``template``/dry-run action; its ``Install`` needs an API server. So
  each variant is installed, for real, into kmock's in-memory Kubernetes emulator (``wait=False``,
  ``HELM_DRIVER=memory``), and the release's manifest (what ``helm template`` would print) is
  validated document by document with ``kubernetes_validate`` (strict). Helm reads HELM_DRIVER when
  its library loads, so the installs run in a child process: this file's ``__main__``.
* The nats dependency is declared but not vendored (no network here): see ``test_lint_default``
  for what Helm makes of that, and ``test_lint_with_vendored_nats`` for the lint a user gets after
  ``helm dependency build charts/fsd``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "fsd"
CRDS = CHART / "crds"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
EXAMPLE = ROOT / "examples" / "inferencemodel-gc1024.yaml"
KIND_SH = ROOT / "tests" / "e2e" / "kind.sh"
DOC = ROOT / "docs" / "deploy-kubernetes.md"

RELEASE = "fsd"
NAMESPACE = "fsd"
K8S_VERSION = "1.30"
# kinds kubernetes-validate has no schema for (custom resources): checked by hand below
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
# Helm's lint severities (helm.sh/helm/v4/pkg/lint/support)
INFO, WARNING, ERROR = 1, 2, 3

EXTERNAL_S3 = {"minio": {"enabled": False}, "external": {"endpoint": "http://s3.storage:9000"}}
EXTERNAL_NATS = {"nats": {"enabled": False}, "externalNats": {"url": "nats://nats.messaging:4222"}}

# every optional component toggled (each linted and rendered)
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "minio-off": {"s3": EXTERNAL_S3},
    "minio-no-persistence": {"s3": {"minio": {"persistence": {"enabled": False}}}},
    "nats-off": EXTERNAL_NATS,
    "pod-monitor": {"prometheus": {"podMonitor": {"enabled": True}}},
    "service-monitor": {"prometheus": {"serviceMonitor": {"enabled": True}}},
    "grafana-dashboard": {"grafana": {"dashboard": {"enabled": True}}},
    "openfaas-pro": {"operator": {"openfaas": {"mode": "pro"}, "logLevel": "debug"}},
    "existing-secrets": {
        "credentials": {
            "natsToken": {"existingSecret": "my-nats"},
            "s3": {"existingSecret": "my-s3"},
            "gatewayPassword": {"existingSecret": "my-gateway", "key": "basic-auth-password"},
        }
    },
    "everything": {
        "s3": EXTERNAL_S3,
        **EXTERNAL_NATS,
        "prometheus": {"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}},
        "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}},
        "operator": {"openfaas": {"mode": "pro"}, "replicas": 0, "logLevel": "warning"},
    },
}

# values the schema must reject: (values, the path jsonschema reports)
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "mode-enterprise": (
        {"operator": {"openfaas": {"mode": "enterprise"}}},
        "operator.openfaas.mode",
    ),
    "negative-replicas": ({"operator": {"replicas": -1}}, "operator.replicas"),
    "two-replicas": ({"operator": {"replicas": 2}}, "operator.replicas"),
    "unknown-top-level-key": ({"replicaCount": 3}, ""),
    "unknown-operator-key": ({"operator": {"replica": 1}}, "operator"),
    "minio-and-external": ({"s3": {"external": {"endpoint": "http://s3.x:9000"}}}, "s3.external"),
    "no-s3-at-all": ({"s3": {"minio": {"enabled": False}}}, "s3.external"),
    "nats-off-without-url": ({"nats": {"enabled": False}}, "externalNats"),
    "bad-log-level": ({"operator": {"logLevel": "verbose"}}, "operator.logLevel"),
    "monitor-not-bool": (
        {"prometheus": {"podMonitor": {"enabled": "yes"}}},
        "prometheus.podMonitor",
    ),
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values over the chart's: maps merge key by key, the rest replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


DEFAULTS: dict[str, Any] = load_yaml(CHART / "values.yaml")
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
CHART_YAML: dict[str, Any] = load_yaml(CHART / "Chart.yaml")


def vendored_nats() -> list[Path]:
    return sorted((CHART / "charts").glob("nats-*.tgz"))


# ---------------------------------------------------------------------------------------------
# files


def test_dashboard_copy_matches_docs() -> None:
    # Helm reads no file outside the chart: dashboards/fsd.json is a copy, kept byte for byte
    assert (CHART / "dashboards" / "fsd.json").read_bytes() == DASHBOARD.read_bytes()


def test_chart_metadata() -> None:
    assert CHART_YAML["apiVersion"] == "v2"
    assert CHART_YAML["name"] == "fsd"
    assert CHART_YAML["version"] == "0.1.0"
    assert str(CHART_YAML["appVersion"]) == "0.1.0"
    assert CHART_YAML["kubeVersion"] == ">=1.26.0-0"
    (nats,) = CHART_YAML["dependencies"]
    assert nats["name"] == "nats"
    assert nats["repository"] == "https://nats-io.github.io/k8s/helm/charts/"
    assert nats["condition"] == "nats.enabled"
    assert re.fullmatch(r"1\.\d+\.\d+", nats["version"])


def test_crds_are_valid_kubernetes_objects() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    files = sorted(CRDS.glob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def crd_schema() -> dict[str, Any]:
    crd = load_yaml(CRDS / "inferencemodels.fsd.dev.yaml")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_example_inferencemodel_matches_the_crd() -> None:
    example = load_yaml(EXAMPLE)
    assert example["apiVersion"] == "fsd.dev/v1alpha1"
    assert example["kind"] == "InferenceModel"
    spec = example["spec"]
    assert spec["source"]["url"] == "s3://fsd/graphchallenge/"
    assert (spec["workers"], spec["channel"], spec["partition"]) == (4, "nats", "min-comm")
    validator = jsonschema.Draft7Validator(crd_schema(), format_checker=jsonschema.FormatChecker())
    assert [e.message for e in validator.iter_errors(example)] == []
    # and the schema does bite: a model with no worker, or with both sources, is refused
    assert not validator.is_valid(merge(example, {"spec": {"workers": 0}}))
    both = merge(example, {"spec": {"source": {"model": "gc1024"}}})
    assert not validator.is_valid(both)
    # the request the docs invoke the coordinator with names the same model
    request = json.loads((ROOT / "examples" / "request.json").read_text())
    assert request["model"] == example["metadata"]["name"]
    assert request["workers"] == spec["workers"]


# ---------------------------------------------------------------------------------------------
# values.schema.json, with jsonschema itself


def test_schema_is_draft7_and_closed() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False
    assert set(DEFAULTS) <= set(SCHEMA["properties"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_schema_accepts_variant(name: str) -> None:
    values = merge(DEFAULTS, VARIANTS[name])
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]
    assert errors == []


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(name: str) -> None:
    override, where = BAD_VALUES[name]
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(merge(DEFAULTS, override)))
    assert errors, f"{name} was accepted"
    paths = {".".join(str(p) for p in e.absolute_path) for e in errors}
    # an if/then rule reports the branch's path; a closed object reports the object itself
    nested = {".".join(str(p) for p in c.absolute_path) for e in errors for c in e.context or []}
    assert any(p == where or p.startswith(where + ".") for p in paths | nested), paths | nested


# ---------------------------------------------------------------------------------------------
# helm lint (helm-sdkpy Lint)


def helm() -> Any:
    return pytest.importorskip("helm_sdkpy", reason="helm-sdkpy missing: make install adds it")


def lint(path: Path) -> list[tuple[int, str]]:
    """Helm's lint messages as (severity, path): helm-sdkpy drops each message's text (its Go
    error marshals to {}), so a finding is told by its severity and where it is."""
    sdk = helm()
    result = asyncio.run(sdk.Lint(sdk.Configuration()).run(str(path)))
    return [(m["Severity"], m["Path"]) for m in result["Messages"] or []]


def chart_copy(tmp: Path, values: dict[str, Any], *, dependencies: bool = True) -> Path:
    """The chart with values.yaml replaced by `values` merged over it (Lint takes no values)."""
    dest = tmp / "fsd"
    shutil.copytree(CHART, dest)
    (dest / "values.yaml").write_text(yaml.safe_dump(merge(DEFAULTS, values), sort_keys=False))
    if not dependencies:
        meta = dict(CHART_YAML)
        meta.pop("dependencies")
        (dest / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return dest


def missing_dependency_warning(path: Path) -> set[tuple[int, str]]:
    """The one finding a declared, not vendored dependency causes (Helm: 'chart directory is
    missing these dependencies: nats'), a warning on the chart folder."""
    return set() if vendored_nats() else {(WARNING, str(path))}


def test_lint_default(tmp_path: Path) -> None:
    """What Helm does with the declared but missing nats dependency: lint warns (severity 2, on
    the chart folder) and still lints the rest; no error. The same chart without the dependency
    in Chart.yaml lints with no warning at all, so that warning is the dependency's."""
    found = lint(CHART)
    assert [m for m in found if m[0] >= ERROR] == []
    assert {m for m in found if m[0] == WARNING} == missing_dependency_warning(CHART)
    stripped = chart_copy(tmp_path, {}, dependencies=False)
    assert [m for m in lint(stripped) if m[0] >= WARNING] == []


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_lint_variant(name: str, tmp_path: Path) -> None:
    path = chart_copy(tmp_path, VARIANTS[name])
    found = lint(path)
    assert [m for m in found if m[0] >= ERROR] == []
    assert {m for m in found if m[0] == WARNING} <= missing_dependency_warning(path)


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_lint_rejects_bad_values(name: str, tmp_path: Path) -> None:
    found = lint(chart_copy(tmp_path, BAD_VALUES[name][0]))
    assert (ERROR, "values.yaml") in found


def test_lint_with_vendored_nats() -> None:
    """The lint a user runs after `helm dependency build charts/fsd`: no error, no warning."""
    if not vendored_nats():
        pytest.skip(
            "the nats subchart is not vendored (charts/fsd/charts/nats-*.tgz): "
            "`helm dependency build charts/fsd` downloads it, and this machine has no network"
        )
    found = lint(CHART)
    assert [m for m in found if m[0] >= WARNING] == []


# ---------------------------------------------------------------------------------------------
# render: helm install into kmock's emulator, in a child process (see the module docstring)

GENERATED = {"fsd-nats-token", "fsd-s3-access-key", "fsd-s3-secret-key", "fsd-gateway-password"}
PREVIOUS_SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {
        "name": "fsd-credentials",
        "namespace": NAMESPACE,
        # what a previous release left: Helm adopts it on install
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {
            "meta.helm.sh/release-name": RELEASE,
            "meta.helm.sh/release-namespace": NAMESPACE,
        },
    },
    "type": "Opaque",
    "data": {
        "fsd-nats-token": "cHJldmlvdXMtbmF0cw==",
        "fsd-s3-access-key": "cHJldmlvdXMtYWs=",
        "fsd-s3-secret-key": "cHJldmlvdXMtc2s=",
        "fsd-gateway-password": "cHJldmlvdXMtZ3c=",
    },
}
OPENFAAS_SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "basic-auth", "namespace": "openfaas"},
    "type": "Opaque",
    "data": {"basic-auth-user": "YWRtaW4=", "basic-auth-password": "b3BlbmZhYXMtcHc="},
}


def render_cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {
        f"variant:{name}": {"values": values} for name, values in VARIANTS.items()
    }
    cases |= {f"bad:{name}": {"values": values} for name, (values, _) in BAD_VALUES.items()}
    cases["upgrade"] = {"values": {}, "objects": [PREVIOUS_SECRET, OPENFAAS_SECRET]}
    cases["no-monitoring-crds"] = {
        "values": VARIANTS["pod-monitor"],
        "monitoring": False,
    }
    return cases


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    helm()
    pytest.importorskip("kmock")
    work = tmp_path_factory.mktemp("render")
    (work / "cases.json").write_text(json.dumps(render_cases()))
    proc = subprocess.run(
        [sys.executable, __file__, str(work / "cases.json"), str(work / "out.json")],
        env={**os.environ, "HELM_DRIVER": "memory"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, dict[str, Any]] = json.loads((work / "out.json").read_text())
    return out


def manifests(result: dict[str, Any]) -> list[dict[str, Any]]:
    assert "error" not in result, result.get("error")
    return [doc for doc in yaml.safe_load_all(result["manifest"]) if doc]


def own(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's own objects, without the nats subchart's (present once it is vendored)."""
    return [d for d in docs if d["metadata"]["labels"].get("helm.sh/chart") == "fsd-0.1.0"]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def the(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = find(docs, kind, name)
    return doc


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_render_validates(name: str, rendered: dict[str, dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = manifests(rendered[f"variant:{name}"])
    mine = own(docs)
    assert mine
    skipped = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_KINDS:  # no offline schema for custom resources
            skipped.add(key)
            continue
        try:  # strict (no unknown field) for the chart's own objects, as written for the subchart
            kubernetes_validate.validate(doc, K8S_VERSION, strict=doc in mine)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}") from exc
    monitors = VARIANTS[name].get("prometheus", {})
    expected = set()
    if monitors.get("podMonitor", {}).get("enabled"):
        expected.add(("monitoring.coreos.com/v1", "PodMonitor"))
    if monitors.get("serviceMonitor", {}).get("enabled"):
        expected.add(("monitoring.coreos.com/v1", "ServiceMonitor"))
    assert skipped == expected


def test_render_defaults(rendered: dict[str, dict[str, Any]]) -> None:
    docs = own(manifests(rendered["variant:defaults"]))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ClusterRole", "fsd-operator"),
        ("ClusterRoleBinding", "fsd-operator"),
        ("Deployment", "fsd-minio"),
        ("Deployment", "fsd-operator"),
        ("PersistentVolumeClaim", "fsd-minio"),
        ("Role", "fsd-operator"),
        ("RoleBinding", "fsd-operator"),
        ("Secret", "fsd-credentials"),
        ("Service", "fsd-minio"),
        ("ServiceAccount", "fsd-operator"),
    ]  # (NATS comes from the subchart once it is vendored)
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "fsd"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "fsd-0.1.0"
    secret = the(docs, "Secret", "fsd-credentials")
    assert set(secret["data"]) == GENERATED
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_render_operator(rendered: dict[str, dict[str, Any]]) -> None:
    docs = manifests(rendered["variant:defaults"])
    deployment = the(docs, "Deployment", "fsd-operator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == "fsd.local/fsd-operator:0.1.0"
    assert container["command"] == ["kopf"]
    args = container["args"]
    assert args[:3] == ["run", "--standalone", "--all-namespaces"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert args[-1] == "operator/main.py"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = env_of(deployment)
    assert env["FSD_OPENFAAS_URL"] == "http://gateway.openfaas:8080"
    assert env["FSD_OPENFAAS_MODE"] == "ce"
    assert env["FSD_FUNCTION_NAMESPACE"] == "openfaas-fn"
    assert env["FSD_GATEWAY_USER"] == "admin"
    assert env["FSD_NATS_URL"] == f"nats://fsd-nats.{NAMESPACE}:4222"
    assert env["FSD_S3_ENDPOINT"] == f"http://fsd-minio.{NAMESPACE}:9000"
    assert env["FSD_S3_BUCKET"] == "fsd"
    assert env["FSD_FUNCTION_IMAGE_COORDINATOR"] == "fsd.local/fsd-coordinator:latest"
    assert env["FSD_FUNCTION_IMAGE_WORKER"] == "fsd.local/fsd-worker:latest"
    for var, key in [
        ("FSD_GATEWAY_PASSWORD", "fsd-gateway-password"),
        ("FSD_NATS_TOKEN", "fsd-nats-token"),
        ("AWS_ACCESS_KEY_ID", "fsd-s3-access-key"),
        ("AWS_SECRET_ACCESS_KEY", "fsd-s3-secret-key"),
    ]:
        assert env[var] == {"secretKeyRef": {"name": "fsd-credentials", "key": key}}
    # the same secrets as files, named as OpenFaaS names them (fsd.settings)
    (secrets,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    files = {i["path"] for s in secrets["projected"]["sources"] for i in s["secret"]["items"]}
    assert files == GENERATED
    # the subchart's NATS reads its token from the same key
    nats_env = DEFAULTS["nats"]["container"]["env"]["FSD_NATS_TOKEN"]["valueFrom"]
    assert nats_env["secretKeyRef"] == {"name": "fsd-credentials", "key": "fsd-nats-token"}


def rules_of(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = the(docs, kind, name)["rules"]
    return rules


def test_render_rbac_is_least_privilege(rendered: dict[str, dict[str, Any]]) -> None:
    docs = manifests(rendered["variant:defaults"])
    assert rules_of(docs, "ClusterRole", "fsd-operator") == [
        {
            "apiGroups": ["fsd.dev"],
            "resources": ["inferencemodels", "inferencemodels/status"],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    assert rules_of(docs, "Role", "fsd-operator") == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["fsd-credentials"],
            "verbs": ["get"],
        }
    ]
    assert find(docs, "Role", "fsd-operator-functions") == []  # CE: the gateway's REST API
    for variant in VARIANTS:
        for doc in own(manifests(rendered[f"variant:{variant}"])):
            for rule in doc.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                assert not {"kopf.dev", "apiextensions.k8s.io"} & set(rule["apiGroups"])
            for binding in find([doc], "ClusterRoleBinding") + find([doc], "RoleBinding"):
                assert binding["subjects"] == [
                    {"kind": "ServiceAccount", "name": "fsd-operator", "namespace": NAMESPACE}
                ]


def test_render_openfaas_pro(rendered: dict[str, dict[str, Any]]) -> None:
    docs = manifests(rendered["variant:openfaas-pro"])
    assert env_of(the(docs, "Deployment", "fsd-operator"))["FSD_OPENFAAS_MODE"] == "pro"
    role = the(docs, "Role", "fsd-operator-functions")
    assert role["metadata"]["namespace"] == "openfaas-fn"
    assert role["rules"] == [
        {
            "apiGroups": ["openfaas.com"],
            "resources": ["functions"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ]
    binding = the(docs, "RoleBinding", "fsd-operator-functions")
    assert binding["metadata"]["namespace"] == "openfaas-fn"
    assert (
        "--debug"
        in the(docs, "Deployment", "fsd-operator")["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
    )


def test_render_external_stores(rendered: dict[str, dict[str, Any]]) -> None:
    docs = manifests(rendered["variant:everything"])
    assert [d for d in docs if "minio" in d["metadata"]["name"]] == []
    operator = the(docs, "Deployment", "fsd-operator")
    env = env_of(operator)
    assert env["FSD_S3_ENDPOINT"] == "http://s3.storage:9000"
    assert env["FSD_NATS_URL"] == "nats://nats.messaging:4222"
    assert operator["spec"]["replicas"] == 0
    assert "--quiet" in operator["spec"]["template"]["spec"]["containers"][0]["args"]
    minio = manifests(rendered["variant:minio-no-persistence"])
    assert find(minio, "PersistentVolumeClaim") == []
    volumes = the(minio, "Deployment", "fsd-minio")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "emptyDir": {}} in volumes


def test_render_nats_subchart(rendered: dict[str, dict[str, Any]]) -> None:
    """NATS as the operator is told to reach it: JetStream on a volume, 8MB payloads, the token."""
    if not vendored_nats():
        pytest.skip("the nats subchart is not vendored: run `helm dependency build charts/fsd`")
    docs = manifests(rendered["variant:defaults"])
    url = env_of(the(docs, "Deployment", "fsd-operator"))["FSD_NATS_URL"]
    host = url.removeprefix("nats://").split(":")[0]
    service, namespace = host.split(".")
    assert find(docs, "Service", service) and namespace == NAMESPACE
    (statefulset,) = find(docs, "StatefulSet")
    assert statefulset["spec"]["volumeClaimTemplates"]  # JetStream's file store
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    (nats,) = [c for c in containers if c["name"] == "nats"]
    token = {e["name"]: e.get("valueFrom") for e in nats["env"]}["FSD_NATS_TOKEN"]
    assert token == {"secretKeyRef": {"name": "fsd-credentials", "key": "fsd-nats-token"}}
    config = "\n".join(v for cm in find(docs, "ConfigMap") for v in cm.get("data", {}).values())
    # nats.conf, as the chart writes it (JSON-like, with the << >> values unquoted)
    assert re.search(r'"?max_payload"?\s*:\s*8MB', config), config
    assert re.search(r'"?token"?\s*:\s*\$FSD_NATS_TOKEN', config), config
    assert re.search(r'"?jetstream"?\s*:?\s*\{', config), config
    assert not any(d["kind"] == "StatefulSet" for d in manifests(rendered["variant:nats-off"]))


def test_render_monitoring_and_dashboard(rendered: dict[str, dict[str, Any]]) -> None:
    pod = the(manifests(rendered["variant:pod-monitor"]), "PodMonitor", "fsd-functions")
    spec = pod["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["openfaas-fn"]}
    assert spec["selector"]["matchExpressions"] == [
        {"key": "faas_function", "operator": "In", "values": ["coordinator", "worker"]}
    ]
    assert spec["podMetricsEndpoints"][0]["port"] == "http"
    assert spec["podMetricsEndpoints"][0]["path"] == "/metrics"

    docs = manifests(rendered["variant:service-monitor"])
    monitor = the(docs, "ServiceMonitor", "fsd-functions")
    services = [the(docs, "Service", f"fsd-metrics-{fn}") for fn in ("coordinator", "worker")]
    for service, fn in zip(services, ("coordinator", "worker"), strict=True):
        assert service["metadata"]["namespace"] == "openfaas-fn"
        assert service["spec"]["selector"] == {"faas_function": fn}
        assert service["spec"]["clusterIP"] == "None"
        selected = monitor["spec"]["selector"]["matchLabels"]
        assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"

    dashboard = the(manifests(rendered["variant:grafana-dashboard"]), "ConfigMap", "fsd-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["fsd.json"]) == json.loads(DASHBOARD.read_text())
    everything = the(manifests(rendered["variant:everything"]), "ConfigMap", "fsd-dashboard")
    assert everything["metadata"]["namespace"] == "monitoring"


def test_render_without_monitoring_crds_fails(rendered: dict[str, dict[str, Any]]) -> None:
    """A PodMonitor on a cluster without the Prometheus Operator fails the install, loudly."""
    error = rendered["no-monitoring-crds"].get("error", "")
    assert "PodMonitor" in error


def test_render_existing_secrets(rendered: dict[str, dict[str, Any]]) -> None:
    docs = own(manifests(rendered["variant:existing-secrets"]))
    assert find(docs, "Secret") == []  # nothing left to generate
    env = env_of(the(docs, "Deployment", "fsd-operator"))
    assert env["FSD_NATS_TOKEN"] == {"secretKeyRef": {"name": "my-nats", "key": "token"}}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "my-s3", "key": "accessKey"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "my-s3", "key": "secretKey"}}
    assert env["FSD_GATEWAY_PASSWORD"] == {
        "secretKeyRef": {"name": "my-gateway", "key": "basic-auth-password"}
    }
    names = rules_of(docs, "Role", "fsd-operator")[0]["resourceNames"]
    assert sorted(names) == ["my-gateway", "my-nats", "my-s3"]
    minio = the(docs, "Deployment", "fsd-minio")
    assert env_of(minio)["MINIO_ROOT_USER"] == {
        "secretKeyRef": {"name": "my-s3", "key": "accessKey"}
    }


def test_render_generates_fresh_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    one = the(manifests(rendered["variant:defaults"]), "Secret", "fsd-credentials")["data"]
    two = the(manifests(rendered["variant:minio-off"]), "Secret", "fsd-credentials")["data"]
    for key in GENERATED:
        assert one[key] != two[key]  # random per fresh install
        assert len(one[key]) >= 24


def test_render_upgrade_keeps_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    """`lookup` on a cluster: the previous Secret's values are kept, and the gateway password is
    OpenFaaS's own (basic-auth in namespace openfaas)."""
    secret = the(manifests(rendered["upgrade"]), "Secret", "fsd-credentials")
    expected = dict(PREVIOUS_SECRET["data"])
    expected["fsd-gateway-password"] = OPENFAAS_SECRET["data"]["basic-auth-password"]
    assert secret["data"] == expected
    assert "copied from the Secret openfaas/basic-auth" in rendered["upgrade"]["notes"]
    # on a cluster without OpenFaaS the notes say the password is not the gateway's
    assert "password could not be read" in rendered["variant:defaults"]["notes"]


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_render_rejects_bad_values(name: str, rendered: dict[str, dict[str, Any]]) -> None:
    error = rendered[f"bad:{name}"].get("error", "")
    assert "values don't meet the specifications of the schema" in error, error
    where = BAD_VALUES[name][1]
    assert (f"at '/{where.replace('.', '/')}" if where else "at ''") in error, error


def test_render_notes(rendered: dict[str, dict[str, Any]]) -> None:
    notes = rendered["variant:defaults"]["notes"]
    for command in (
        "kubectl apply -f examples/inferencemodel-gc1024.yaml",
        "kubectl get im",
        "faas-cli invoke coordinator < examples/request.json",
        "aws s3 cp --recursive",
    ):
        assert command in notes


# ---------------------------------------------------------------------------------------------
# the end-to-end script and its documentation (they need Docker, kind and a network to run)


def test_kind_script_parses() -> None:
    text = KIND_SH.read_text()
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(KIND_SH)], check=True)


def test_docs_cover_every_step() -> None:
    text = DOC.read_text()
    script = KIND_SH.read_text()
    for step in (
        "kind create cluster",
        "helm dependency build charts/fsd",
        "helm install fsd charts/fsd -n fsd --create-namespace",
        "faas-cli build",
        "kind load docker-image",
        "docker build -f operator/Dockerfile",
        "kubectl apply -f examples/inferencemodel-gc1024.yaml",
        "kubectl get im",
        "faas-cli invoke coordinator < examples/request.json",
        "helm uninstall fsd",
    ):
        assert step in text, step
        assert step.split(" <")[0] in script, step


# ---------------------------------------------------------------------------------------------
# the child process: python tests/test_chart.py CASES.json OUT.json (HELM_DRIVER=memory)

MONITORING_RESOURCES = {"podmonitors": "PodMonitor", "servicemonitors": "ServiceMonitor"}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


def _kubeconfig(server: str) -> str:
    return str(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "kmock", "user": {"token": "kmock"}}],
                "contexts": [
                    {
                        "name": "kmock",
                        "context": {"cluster": "kmock", "user": "kmock", "namespace": NAMESPACE},
                    }
                ],
            }
        )
    )


async def _install(case: dict[str, Any]) -> dict[str, Any]:
    import helm_sdkpy  # type: ignore[import-untyped]
    import kmock

    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        api.resources.load_bundled()  # the built-in kinds of a real cluster
        if case.get("monitoring", True):  # as if the Prometheus Operator's CRDs were installed
            for plural, kind in MONITORING_RESOURCES.items():
                api.resources[f"monitoring.coreos.com/v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs=VERBS
                )

        async def core_v1(request: Any) -> dict[str, Any]:
            # kmock 0.8 names the core group's version "/v1"; client-go wants "v1"
            return {
                "apiVersion": "v1",
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": res.plural,
                        "singularName": info.singular or res.plural,
                        "kind": info.kind,
                        "namespaced": bool(info.namespaced),
                        "verbs": sorted(info.verbs),
                    }
                    for res in api.resources
                    for info in [api.resources[res]]
                    if res.group == "" and res.version == "v1"
                ],
            }

        api["get /api/v1"] << core_v1
        for obj in case.get("objects", []):
            meta = obj["metadata"]
            api.objects["v1/secrets", meta["namespace"], meta["name"]] = obj

        config = helm_sdkpy.Configuration(
            namespace=NAMESPACE, kubeconfig=_kubeconfig(str(server.url).rstrip("/"))
        )
        try:
            release = await helm_sdkpy.Install(config).run(
                RELEASE, str(CHART), values=case["values"] or None, wait=False, timeout=30
            )
        except helm_sdkpy.HelmError as exc:
            return {"error": str(exc)}
        return {"manifest": release["manifest"], "notes": release["info"].get("notes", "")}


def _main(cases_file: str, out_file: str) -> None:
    assert os.environ.get("HELM_DRIVER") == "memory", "run with HELM_DRIVER=memory"
    cases = json.loads(Path(cases_file).read_text())
    results = {name: asyncio.run(_install(case)) for name, case in cases.items()}
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
